"""Loss weighting for joint training (METHODS.md section 3): static weights, S0 Eq. 6 and
MTAN's DWA on hand-computed loss histories, the first-two-epochs rule, resume."""

from __future__ import annotations

import json
import math

import pytest

from fusionseg.losses.weighting import DynamicWeighting, StaticWeighting

#: Epoch-mean training losses of epochs 0, 1, 2.
HISTORY = [{"fusion": 4.0, "seg": 2.0}, {"fusion": 2.0, "seg": 2.0}, {"fusion": 1.5, "seg": 3.0}]
# epoch 2: r_f = 2/4 = 0.5, r_s = 2/2 = 1;  epoch 3: r_f = 1.5/2 = 0.75, r_s = 3/2 = 1.5


def _filled(weighting):
    for row in HISTORY:
        weighting.record_epoch(row)
    return weighting


def test_static_weights_every_epoch():
    w = _filled(StaticWeighting(1e-5))
    for epoch in range(5):
        assert w.weights(epoch) == {"fusion": 1e-5, "seg": 1.0}
    assert [r["lambda_fusion"] for r in w.history()] == [1e-5] * 3


def test_static_rejects_negative_weight():
    with pytest.raises(ValueError, match="lambda_f"):
        StaticWeighting(-1.0)


def test_s0_first_two_epochs_are_one_half():
    w = DynamicWeighting()
    assert w.weights(0) == {"fusion": 0.5, "seg": 0.5}
    w.record_epoch(HISTORY[0])
    assert w.weights(1) == {"fusion": 0.5, "seg": 0.5}


def test_s0_eq6_hand_computed():
    """lambda_f = exp(r_f/T) / (exp(r_f/T) + exp(r_s/T)) = 1 / (1 + exp((r_s - r_f)/T)), T = 1."""
    w = _filled(DynamicWeighting(temperature=1.0, variant="s0"))
    assert w.descent_rates(2) == {"fusion": 0.5, "seg": 1.0}
    w2 = w.weights(2)
    assert w2["fusion"] == pytest.approx(0.3775406687981454, abs=1e-15)  # 1 / (1 + e^0.5)
    assert w2["seg"] == pytest.approx(1 - 0.3775406687981454, abs=1e-15)
    w3 = w.weights(3)
    assert w3["fusion"] == pytest.approx(0.320821300824607, abs=1e-15)  # 1 / (1 + e^0.75)
    assert w3["fusion"] + w3["seg"] == pytest.approx(1.0, abs=1e-15)


def test_s0_temperature():
    w = _filled(DynamicWeighting(temperature=2.0))
    assert w.weights(2)["fusion"] == pytest.approx(0.43782349911420193, abs=1e-15)  # 1 / (1 + e^0.25)


def test_dwa_hand_computed_and_first_epochs_are_one():
    """DWA: lambda_k = K exp(r_k/T) / sum_j exp(r_j/T), K = 2, default T = 2; 1 each in epochs 0, 1."""
    w = DynamicWeighting(variant="dwa")
    assert w.temperature == 2.0
    assert w.weights(0) == w.weights(1) == {"fusion": 1.0, "seg": 1.0}
    _filled(w)
    assert w.weights(2)["fusion"] == pytest.approx(0.8756469982284039, abs=1e-15)  # 2 / (1 + e^0.25)
    assert w.weights(2)["seg"] == pytest.approx(1.1243530017715961, abs=1e-15)  # 2 / (1 + e^-0.25)
    assert w.weights(3)["fusion"] == pytest.approx(0.8146668000918605, abs=1e-15)  # 2 / (1 + e^0.375)
    assert w.weights(3)["seg"] == pytest.approx(1.1853331999081393, abs=1e-15)


def test_history_rows_per_recorded_epoch():
    rows = _filled(DynamicWeighting()).history()
    assert [r["epoch"] for r in rows] == [0, 1, 2]
    assert [r["lambda_fusion"] for r in rows[:2]] == [0.5, 0.5]
    assert rows[2]["lambda_fusion"] == pytest.approx(1 / (1 + math.exp(0.5)))
    assert rows[2]["loss_fusion"] == 1.5 and rows[2]["loss_seg"] == 3.0


def test_weights_need_the_two_previous_epochs():
    w = DynamicWeighting()
    w.record_epoch(HISTORY[0])
    with pytest.raises(ValueError, match="only 1 epoch"):
        w.weights(2)
    with pytest.raises(ValueError, match="epoch must be >= 0"):
        w.weights(-1)


def test_record_epoch_validates_values():
    w = DynamicWeighting()
    with pytest.raises(KeyError, match="seg"):
        w.record_epoch({"fusion": 1.0})
    with pytest.raises(ValueError, match="finite and > 0"):
        w.record_epoch({"fusion": 0.0, "seg": 1.0})
    with pytest.raises(ValueError, match="finite and > 0"):
        w.record_epoch({"fusion": float("nan"), "seg": 1.0})


def test_large_rates_do_not_overflow():
    w = DynamicWeighting(temperature=1e-3)
    w.record_epoch({"fusion": 1e-3, "seg": 1.0})
    w.record_epoch({"fusion": 1.0, "seg": 1.0})  # r_f = 1000, r_s = 1
    assert w.weights(2) == {"fusion": 1.0, "seg": 0.0}


@pytest.mark.parametrize("variant", ["s0", "dwa"])
def test_resume_from_state_dict(variant):
    full = _filled(DynamicWeighting(variant=variant))
    partial = DynamicWeighting(variant=variant)
    partial.record_epoch(HISTORY[0])
    state = json.loads(json.dumps(partial.state_dict()))  # plain data survives a JSON round trip
    resumed = DynamicWeighting(variant=variant)
    resumed.load_state_dict(state)
    for row in HISTORY[1:]:
        resumed.record_epoch(row)
    assert resumed.history() == full.history()
    assert resumed.weights(3) == full.weights(3)


def test_load_state_dict_rejects_other_settings():
    state = _filled(DynamicWeighting(variant="s0")).state_dict()
    with pytest.raises(ValueError, match="checkpoint holds"):
        DynamicWeighting(variant="dwa").load_state_dict(state)
    with pytest.raises(ValueError, match="checkpoint holds"):
        StaticWeighting(1e-5).load_state_dict(state)
    static = StaticWeighting(1e-5)
    static.load_state_dict(_filled(StaticWeighting(1e-5)).state_dict())
    assert len(static.loss_history) == 3


def test_invalid_dynamic_arguments():
    with pytest.raises(ValueError, match="variant"):
        DynamicWeighting(variant="gradnorm")
    with pytest.raises(ValueError, match="temperature"):
        DynamicWeighting(temperature=0.0)
