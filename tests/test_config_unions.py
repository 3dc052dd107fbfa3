"""Strategy-specific config sections (pydantic discriminated unions): a setting that
does not apply cannot be written; lesion-wise parameters in YAML; saved configs of
earlier versions still read."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fusionseg.config import (
    DecoupledFusionConfig,
    DynamicFusionConfig,
    SegOnlyFusionConfig,
    StaticFusionConfig,
    drop_inapplicable,
    load_config,
    load_saved_config,
    validate_config,
    validate_saved_config,
)
from fusionseg.errors import ConfigError
from fusionseg.experiments.study import load_study

REPO = Path(__file__).resolve().parents[1]
S0 = REPO / "configs" / "s0_table1.yaml"


def raw(**sections) -> dict:
    return {"name": "x", "data": {"root": "somewhere"}, **sections}


def problems(config: dict) -> list[str]:
    """The problem lines of the ConfigError ``config`` raises."""
    with pytest.raises(ConfigError) as info:
        validate_config(config)
    return str(info.value).splitlines()[1:]


# -- valid sections ------------------------------------------------------------------


@pytest.mark.parametrize(
    "strategy, fusion, cls",
    [
        ("decoupled", None, DecoupledFusionConfig),
        ("decoupled", {"epochs": 3, "lr": 1e-3}, DecoupledFusionConfig),
        ("joint", None, StaticFusionConfig),
        ("joint", {"lambda_f": 5e-6}, StaticFusionConfig),
        ("joint", {"weighting": "static", "lambda_f": 1e-4, "lambda_s": 2.0}, StaticFusionConfig),
        ("joint", {"weighting": "dynamic"}, DynamicFusionConfig),
        ("joint", {"weighting": "dwa", "temperature": 2.0}, DynamicFusionConfig),
        ("joint", {"weighting": "seg_only"}, SegOnlyFusionConfig),
    ],
)
def test_each_strategy_and_weighting_loads_its_own_section(strategy, fusion, cls):
    cfg = validate_config(raw(strategy=strategy, **({} if fusion is None else {"fusion": fusion})))
    assert type(cfg.fusion) is cls
    f = cfg.fusion
    for key, value in (fusion or {}).items():
        assert getattr(f, key) == value
    # the attributes the builders read
    assert (f.model.name, f.detail, f.salient, f.seg_inputs, f.perceptual_features) == (
        "lrrnet",
        "t1ce",
        "flair",
        None,
        "imagenet",
    )
    assert (f.w_s, f.w_d, f.gammas) == (3.0, 0.5, (10.0, 1.5, 1.0, 2000.0))


def test_default_sections_are_as_before():
    assert validate_config(raw()).fusion is None  # early
    assert validate_config(raw(strategy="decoupled")).fusion.epochs is None
    joint = validate_config(raw(strategy="joint")).fusion
    assert (joint.weighting, joint.lambda_f, joint.lambda_s, joint.lr) == ("static", 1e-5, 1.0, 1e-4)
    assert validate_config(raw(strategy="joint", fusion={"weighting": "dynamic"})).fusion.temperature is None
    assert validate_config(raw(strategy="joint", fusion=None)) == validate_config(raw(strategy="joint"))


def test_fusion_source_names_stay_canonical():
    f = validate_config(raw(strategy="joint", fusion={"detail": "T1Gd", "seg_inputs": ["T1Gd", "FLAIR"]})).fusion
    assert f.detail == "t1ce" and f.seg_inputs == ["t1ce", "flair"]


# -- settings that do not apply --------------------------------------------------------

COMMON = "model, detail, salient, seg_inputs, perceptual_features, w_s, w_d, gammas, lr"


@pytest.mark.parametrize(
    "strategy, fusion, expected",
    [
        (
            "early",
            {"lr": 1e-3},
            "fusion does not apply under strategy: early (a fusion section is for strategy decoupled or "
            "joint; early has no image-fusion network)",
        ),
        ("early", {"lamda_f": 1}, "fusion.lamda_f: unknown key (and no fusion section applies under strategy: early)"),
        (
            "decoupled",
            {"lambda_f": 1e-5},
            "fusion.lambda_f does not apply under strategy: decoupled (loss weighting is a joint setting; "
            f"decoupled takes: {COMMON}, epochs)",
        ),
        (
            "decoupled",
            {"weighting": "static", "temperature": 1.0},
            "fusion.weighting, fusion.temperature do not apply under strategy: decoupled (loss weighting is "
            f"a joint setting; decoupled takes: {COMMON}, epochs)",
        ),
        (
            "joint",
            {"epochs": 3},
            "fusion.epochs does not apply under strategy: joint (only decoupled pre-trains the fusion network; "
            f"joint takes: {COMMON}, weighting, lambda_f, lambda_s)",
        ),
        (
            "joint",
            {"weighting": "dynamic", "lambda_f": 0.1},
            "fusion.lambda_f does not apply under fusion.weighting: dynamic (it takes: temperature)",
        ),
        (
            "joint",
            {"weighting": "dwa", "lambda_s": 2.0},
            "fusion.lambda_s does not apply under fusion.weighting: dwa (it takes: temperature)",
        ),
        (
            "joint",
            {"temperature": 2.0},
            "fusion.temperature does not apply under fusion.weighting: static (it takes: lambda_f, lambda_s)",
        ),
        (
            "joint",
            {"weighting": "seg_only", "lambda_f": 0.1},
            "fusion.lambda_f does not apply under fusion.weighting: seg_only (it takes no weighting settings)",
        ),
        (
            "joint",
            {"weighting": "dinamic"},
            "fusion.weighting: 'dinamic' is not a weighting; choose one of static, dynamic, dwa, seg_only",
        ),
        (
            "joint",
            {"lamda_f": 1e-5},
            f"fusion.lamda_f: unknown key; fusion under strategy: joint, weighting: static takes: {COMMON}, "
            "weighting, lambda_f, lambda_s",
        ),
        (
            "joint",
            {"strategy": "joint"},
            "fusion.strategy: unknown key; the strategy is the top-level `strategy` (here joint)",
        ),
        ("joint", "lrrnet", "fusion must be a mapping of settings, got 'lrrnet'"),
    ],
)
def test_a_setting_that_does_not_apply_is_one_line_naming_it(strategy, fusion, expected):
    assert problems(raw(strategy=strategy, fusion=fusion)) == [f"  - {expected}"]


def test_every_problem_is_listed_once_with_its_key():
    lines = problems(
        raw(
            strategy="joint",
            fusion={"weighting": "static", "temperature": 1.0, "lamda_s": 2},
            train={"epoch": 3},
            evaluation={"challenge": "GLLI"},
        )
    )
    assert lines == [
        "  - fusion.temperature does not apply under fusion.weighting: static (it takes: lambda_f, lambda_s)",
        f"  - fusion.lamda_s: unknown key; fusion under strategy: joint, weighting: static takes: {COMMON}, "
        "weighting, lambda_f, lambda_s",
        "  - train.epoch: Extra inputs are not permitted",
        "  - evaluation.challenge: unknown challenge 'GLLI'; choose one of "
        "['GLI', 'MEN', 'MET', 'PED', 'SSA', 'custom']",
    ]


def test_value_errors_inside_a_section_name_the_key_without_the_union_member():
    assert problems(raw(strategy="joint", fusion={"weighting": "dwa", "temperature": -1})) == [
        "  - fusion.temperature: Input should be greater than 0"
    ]
    assert problems(raw(strategy="decoupled", fusion={"epochs": 0})) == [
        "  - fusion.epochs: Input should be greater than or equal to 1"
    ]
    assert problems(raw(strategy="joint", fusion={"model": {"name": "lrrnet", "kwarg": {}}})) == [
        "  - fusion.model.kwarg: Extra inputs are not permitted"
    ]


def test_strategy_typo_lists_the_strategies():
    assert problems(raw(strategy="erly")) == [
        "  - strategy: Input should be 'early', 'decoupled', 'joint', 'a2fseg', 'threshold' or 'ssl' (got 'erly')"
    ]


def test_set_overrides_are_checked_as_the_file(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(raw()))
    with pytest.raises(ConfigError) as info:
        load_config(path, ["strategy=joint", "fusion.weighting=dynamic", "fusion.lambda_f=0.1"])
    assert str(info.value) == (
        f"{path}: invalid configuration:\n"
        "  - fusion.lambda_f does not apply under fusion.weighting: dynamic "
        "(it takes: temperature)"
    )
    cfg = load_config(path, ["strategy=joint", "fusion.weighting=dwa", "fusion.temperature=2"])
    assert cfg.fusion.weighting == "dwa" and cfg.fusion.temperature == 2.0


def test_typos_fail_without_importing_torch():
    """Names checked at load fail before the model registries (torch, MONAI) load."""
    code = (
        "import sys\n"
        "from fusionseg.config import validate_config\n"
        "from fusionseg.errors import ConfigError\n"
        "for bad in [{'strategy': 'erly'}, {'evaluation': {'challenge': 'GLLI'}},\n"
        "            {'strategy': 'joint', 'fusion': {'weighting': 'dynamic', 'lambda_f': 0.1}}]:\n"
        "    try:\n"
        "        validate_config({'name': 'x', 'data': {'root': 'r'}, **bad})\n"
        "        sys.exit('no error')\n"
        "    except ConfigError:\n"
        "        pass\n"
        "sys.exit(1 if 'torch' in sys.modules else 0)\n"
    )
    assert subprocess.run([sys.executable, "-c", code], timeout=300).returncode == 0


# -- round trip --------------------------------------------------------------------


@pytest.mark.parametrize(
    "sections",
    [
        {},
        {"strategy": "decoupled"},
        {"strategy": "decoupled", "fusion": {"epochs": 3, "perceptual_features": "random"}},
        {"strategy": "joint"},
        {"strategy": "joint", "fusion": {"weighting": "dynamic", "temperature": 1.5}},
        {"strategy": "joint", "fusion": {"weighting": "dwa"}},
        {"strategy": "joint", "fusion": {"weighting": "seg_only"}},
        {"evaluation": {"challenge": {"preset": "MEN", "dilation": 2}}},
        {"evaluation": {"challenge": {"dilation": 0, "volume_threshold_mm3": 10}}},
    ],
)
def test_to_yaml_round_trips(sections, tmp_path):
    cfg = validate_config(raw(**sections))
    path = tmp_path / "x.yaml"
    path.write_text(cfg.to_yaml())
    assert load_config(path) == cfg
    dumped = yaml.safe_load(cfg.to_yaml())
    assert dumped["fusion"] is None or "strategy" not in dumped["fusion"]  # filled in at load only
    if cfg.strategy == "joint":
        assert set(dumped["fusion"]) == set(DecoupledFusionConfig.model_fields) - {"strategy", "epochs"} | {
            "weighting"
        } | set(type(cfg.fusion).model_fields) - {"strategy"}


def test_dumped_sections_hold_only_what_applies():
    dyn = yaml.safe_load(validate_config(raw(strategy="joint", fusion={"weighting": "dynamic"})).to_yaml())
    assert "lambda_f" not in dyn["fusion"] and "epochs" not in dyn["fusion"]
    assert dyn["fusion"]["temperature"] is None
    dec = yaml.safe_load(validate_config(raw(strategy="decoupled")).to_yaml())
    assert "weighting" not in dec["fusion"] and dec["fusion"]["epochs"] is None
    assert yaml.safe_load(validate_config(raw()).to_yaml())["fusion"] is None


# -- lesion-wise parameters ----------------------------------------------------------


def test_challenge_preset_string_dumps_as_before():
    cfg = validate_config(raw(evaluation={"challenge": "GLI"}))
    assert "  challenge: GLI\n" in cfg.to_yaml()
    p = cfg.evaluation.lesion_params()
    assert (p.challenge, p.dilation, p.volume_threshold_mm3) == ("GLI", 3, 50.0)
    assert validate_config(raw()).evaluation.lesion_params().challenge == "GLI"
    assert validate_config(raw(evaluation={"challenge": "BraTS-MET"})).evaluation.lesion_params().dilation == 1


@pytest.mark.parametrize(
    "challenge, expected, dumped",
    [
        (
            {"preset": "GLI", "dilation": 2, "volume_threshold_mm3": 20},
            ("custom", 2, 20.0),
            {"preset": "GLI", "dilation": 2, "volume_threshold_mm3": 20.0},
        ),
        ({"preset": "MEN", "dilation": 2}, ("custom", 2, 50.0), {"preset": "MEN", "dilation": 2}),
        (
            {"preset": "MET", "volume_threshold_mm3": 10},
            ("custom", 1, 10.0),
            {"preset": "MET", "volume_threshold_mm3": 10.0},
        ),
        ({"preset": "PED"}, ("PED", 3, 50.0), {"preset": "PED"}),
        (
            {"dilation": 0, "volume_threshold_mm3": 1e7},
            ("custom", 0, 1e7),
            {"preset": "custom", "dilation": 0, "volume_threshold_mm3": 1e7},
        ),
        (
            {"preset": "custom", "dilation": 1, "volume_threshold_mm3": 5},
            ("custom", 1, 5.0),
            {"preset": "custom", "dilation": 1, "volume_threshold_mm3": 5.0},
        ),
    ],
)
def test_challenge_mapping_as_the_evaluate_cli(challenge, expected, dumped):
    """As `fusionseg evaluate --challenge P --dilation D --volume-threshold T`: either
    number overrides the preset's (the result is 'custom'); without a preset both."""
    cfg = validate_config(raw(evaluation={"challenge": challenge}))
    p = cfg.evaluation.lesion_params()
    assert (p.challenge, p.dilation, p.volume_threshold_mm3) == expected
    assert yaml.safe_load(cfg.to_yaml())["evaluation"]["challenge"] == dumped


@pytest.mark.parametrize(
    "challenge, expected",
    [
        (
            "GLLI",
            "evaluation.challenge: unknown challenge 'GLLI'; choose one of "
            "['GLI', 'MEN', 'MET', 'PED', 'SSA', 'custom']",
        ),
        (
            {"preset": "GLLI", "dilation": 2},
            "evaluation.challenge: unknown challenge 'GLLI'; choose one of "
            "['GLI', 'MEN', 'MET', 'PED', 'SSA', 'custom']",
        ),
        ("custom", "evaluation.challenge: custom needs both numbers: write {dilation: D, volume_threshold_mm3: TAU}"),
        (
            {"dilation": 2},
            "evaluation.challenge without a preset needs both dilation and volume_threshold_mm3 "
            "(or a preset, e.g. {preset: GLI, dilation: 2}, whose values they override)",
        ),
        ({"preset": "GLI", "dilatoin": 2}, "evaluation.challenge.dilatoin: Extra inputs are not permitted"),
        (
            {"preset": "GLI", "dilation": -1},
            "evaluation.challenge.dilation: Input should be greater than or equal to 0",
        ),
        (
            3,
            "evaluation.challenge must be a preset name (e.g. GLI) or a mapping "
            "{preset, dilation, volume_threshold_mm3}, got 3",
        ),
    ],
)
def test_challenge_errors_name_the_key(challenge, expected):
    assert problems(raw(evaluation={"challenge": challenge})) == [f"  - {expected}"]


# -- saved configs of earlier versions -------------------------------------------------

OLD_FUSION = {
    "model": {"name": "lrrnet", "kwargs": {}},
    "detail": "t1ce",
    "salient": "flair",
    "seg_inputs": None,
    "perceptual_features": "imagenet",
    "w_s": 3.0,
    "w_d": 0.5,
    "gammas": [10.0, 1.5, 1.0, 2000.0],
    "lr": 0.0001,
    "epochs": None,
    "weighting": "static",
    "lambda_f": 1e-05,
    "lambda_s": 1.0,
    "temperature": None,
}


@pytest.mark.parametrize(
    "strategy, fusion",
    [
        ("early", {}),
        ("decoupled", {"epochs": 3}),
        ("joint", {}),
        ("joint", {"weighting": "dynamic"}),
        ("joint", {"weighting": "seg_only", "lambda_f": 0.5}),
    ],
)
def test_saved_config_of_an_earlier_version_reads(strategy, fusion, tmp_path):
    """Earlier versions saved every fusion setting under every strategy."""
    old = {**yaml.safe_load(validate_config(raw()).to_yaml()), "strategy": strategy, "fusion": {**OLD_FUSION, **fusion}}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(old, sort_keys=False))
    with pytest.raises(ConfigError, match="(does|do) not apply"):
        load_config(path)  # a user's config is strict
    cfg = load_saved_config(path)
    assert cfg == validate_saved_config(old)
    assert cfg.strategy == strategy
    if strategy == "early":
        assert cfg.fusion is None
    else:
        assert cfg.fusion.lr == 1e-4
        for key, value in fusion.items():
            if hasattr(cfg.fusion, key):
                assert getattr(cfg.fusion, key) == value
    assert load_saved_config(path) == cfg
    (tmp_path / "new.yaml").write_text(cfg.to_yaml())
    assert load_config(tmp_path / "new.yaml") == cfg  # what this version saves is a valid config


def test_saved_config_tolerance_keeps_typos_and_invalid_values():
    with pytest.raises(ConfigError, match="fusion.lamda_f: unknown key"):
        validate_saved_config(raw(strategy="joint", fusion={"lamda_f": 1.0}))
    with pytest.raises(ConfigError, match="fusion.lr: Input should be greater than 0"):
        validate_saved_config(raw(strategy="joint", fusion={**OLD_FUSION, "lr": 0}))
    with pytest.raises(ConfigError, match="cannot be read"):
        load_saved_config(Path("/nonexistent/config.yaml"))


def test_drop_inapplicable_keeps_what_the_entry_wrote():
    merged = raw(strategy="joint", fusion={"epochs": 3, "weighting": "dynamic", "lambda_f": 1.0, "lr": 1e-3})
    assert drop_inapplicable(merged)["fusion"] == {"weighting": "dynamic", "lr": 1e-3}
    kept = drop_inapplicable(merged, written={"fusion": {"lambda_f": 1.0}})
    assert kept["fusion"] == {"weighting": "dynamic", "lambda_f": 1.0, "lr": 1e-3}
    assert "fusion" not in drop_inapplicable(raw(fusion={"lr": 1e-3}))
    assert drop_inapplicable(raw(fusion={"lr": 1e-3}), written={"fusion": {"lr": 1e-3}})["fusion"] == {"lr": 1e-3}
    assert merged["fusion"]["epochs"] == 3  # the input is not changed


# -- studies: shared settings apply to the rows they fit ------------------------------

S0_PROTOCOLS = list(yaml.safe_load(S0.read_text())["protocols"])
S0_ROWS = [r["name"] for r in yaml.safe_load(S0.read_text())["runs"]]


@pytest.mark.parametrize("protocol", S0_PROTOCOLS)
def test_every_row_of_the_s0_study_loads(protocol):
    study = load_study(S0, protocol)
    assert [c.name for c in study.configs] == S0_ROWS
    by = {c.name: c for c in study.configs}
    assert by["A"].fusion is None
    assert isinstance(by["B"].fusion, DecoupledFusionConfig)
    assert by["B"].fusion.epochs == {"cpu-small": 3, "cpu-small-cv": 3, "executor-check": 1}.get(protocol)
    assert isinstance(by["C-dynamic"].fusion, DynamicFusionConfig)
    assert isinstance(by["C-seg-only"].fusion, SegOnlyFusionConfig)
    statics = [c for c in study.configs if c.name.startswith("C-static-")]
    assert [c.fusion.lambda_f for c in statics] == [float(c.name.removeprefix("C-static-")) for c in statics]
    for cfg in study.configs:
        assert validate_config(yaml.safe_load(cfg.to_yaml())) == cfg
        if cfg.fusion is not None:  # the base's and the protocol's fusion settings
            assert cfg.fusion.lr == 1e-4 and cfg.fusion.model.kwargs["blocks"] == 4
            assert cfg.fusion.perceptual_features == ("imagenet" if protocol == "paper" else "random")


@pytest.mark.parametrize("row", S0_ROWS[1:])
def test_each_s0_row_loads_alone_with_the_reference(row):
    study = load_study(S0, "cpu-small", rows=["A", row])
    assert [c.name for c in study.configs] == ["A", row]


def test_s0_describe_strategy_is_unchanged():
    from fusionseg.strategies.registry import describe_strategy

    by = {c.name: c for c in load_study(S0, "cpu-small").configs}
    common = {
        "fusion_model": "lrrnet",
        "detail_source": "t1ce",
        "salient_source": "flair",
        "seg_inputs": ["t1ce", "flair"],
    }
    assert describe_strategy(by["A"]) == {}
    assert describe_strategy(by["B"]) == {**common, "perceptual_features": "random"}
    assert describe_strategy(by["C-dynamic"]) == {
        **common,
        "weighting": "dynamic",
        "lambda_f": None,
        "lambda_s": None,
        "perceptual_features": "random",
    }
    assert describe_strategy(by["C-static-5e-6"]) == {
        **common,
        "weighting": "static",
        "lambda_f": 5e-6,
        "lambda_s": 1.0,
        "perceptual_features": "random",
    }
    assert describe_strategy(by["C-seg-only"]) == {
        **common,
        "weighting": "seg_only",
        "lambda_f": None,
        "lambda_s": None,
    }
    assert list(describe_strategy(by["C-static-5e-6"])) == [
        "fusion_model",
        "detail_source",
        "salient_source",
        "seg_inputs",
        "weighting",
        "lambda_f",
        "lambda_s",
        "perceptual_features",
    ]


def _study(tmp_path, runs, base_fusion=None) -> Path:
    study = {
        "study": "t",
        "reference": "A",
        "base": {
            "data": {"root": "somewhere"},
            "fusion": base_fusion or {"epochs": 2, "perceptual_features": "random"},
        },
        "runs": runs,
    }
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    return path


def test_study_shared_settings_apply_to_the_rows_they_fit(tmp_path):
    path = _study(
        tmp_path,
        [
            {"name": "A"},
            {"name": "B", "strategy": "decoupled"},
            {"name": "C", "strategy": "joint", "fusion": {"weighting": "dynamic"}},
        ],
    )
    by = {c.name: c for c in load_study(path, overrides=["fusion.lambda_f=0.5"]).configs}
    assert by["A"].fusion is None
    assert by["B"].fusion.epochs == 2 and by["C"].fusion.perceptual_features == "random"
    assert not hasattr(by["C"].fusion, "lambda_f")


def test_study_row_own_settings_that_do_not_apply_are_errors(tmp_path):
    path = _study(tmp_path, [{"name": "A", "fusion": {"lr": 1e-3}}])
    with pytest.raises(
        ConfigError, match="run A: invalid configuration:\n  - fusion does not apply under strategy: early"
    ):
        load_study(path)
    path = _study(
        tmp_path, [{"name": "A"}, {"name": "C", "strategy": "joint", "fusion": {"weighting": "dynamic", "lambda_f": 1}}]
    )
    with pytest.raises(ConfigError, match="fusion.lambda_f does not apply under fusion.weighting: dynamic"):
        load_study(path)
    path = _study(tmp_path, [{"name": "A"}], base_fusion={"lamda_f": 1.0})
    with pytest.raises(ConfigError, match="fusion.lamda_f: unknown key"):  # a shared typo is still one
        load_study(path)
