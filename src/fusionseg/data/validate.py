"""One validation path for the commands that read cases (``train``, ``compare``,
``predict``): the checks of ``fusionseg data check`` (:func:`fusionseg.data.check.check_case`)
run before any work, with the same messages; errors stop the command, warnings are
printed.
"""

from __future__ import annotations

from collections.abc import Iterable

from rich.console import Console
from rich.markup import escape

from fusionseg.data.cases import Case, Dataset
from fusionseg.data.check import check_case
from fusionseg.data.problems import MAX_LISTED, Problem, raise_problems


def validate_cases(
    cases: Iterable[Case],
    dataset: Dataset,
    console: Console | None = None,
    what: str = "training",
    fix: str = "or restrict data.cases",
) -> list[Problem]:
    """Check ``cases`` of ``dataset`` as ``fusionseg data check`` does.

    Args:
        cases: the cases to check (e.g. those not yet in the preprocessing cache).
        dataset: their dataset (label scheme, layout).
        console: where warnings are printed (None: not printed).
        what: the work that needs the cases, for the message.
        fix: the command's own way around bad cases, appended to the fix.
    Returns:
        The warnings found.
    Raises:
        DataError: any error-level problem; the message lists each (case, file,
            problem, fix), at most :data:`MAX_LISTED`, and points to ``data check``.
    """
    errors: list[Problem] = []
    warnings: list[Problem] = []
    for case in cases:
        for problem in check_case(case, dataset):
            (errors if problem.severity == "error" else warnings).append(problem)
    if console is not None:
        for w in warnings[:MAX_LISTED]:
            console.print(f"[yellow]warning:[/] {escape(f'{w.case_id}: {w.file}: {w.problem}')}", highlight=False)
    raise_problems(
        errors,
        dataset.root,
        what,
        f"repair or remove those cases (`fusionseg data check {dataset.root}` lists every problem), {fix}.",
    )
    return warnings
