"""SecAgg+ with real Flower processes: the masked sum equals the plain weighted mean of the same updates
(to SecAgg+'s quantization), and a device that drops after sharing its keys does not stop the round."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import digits_federation, wait_for
from edgefleet.federated import JobSpec, load_dataset, load_final_head
from edgefleet.federated._client_app import SECAGG_MAX_WEIGHT

pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]


def test_secagg_aggregate_matches_fedavg_and_survives_a_dropout_after_key_sharing(tmp_path, federation):
    folders, base, held_out = digits_federation(4, tmp_path / "data")
    spec = JobSpec(
        job_id="secagg",
        rounds=1,
        clients_per_round=4,
        min_clients=3,
        local_epochs=1,
        learning_rate=0.5,
        round_deadline_s=30,
        secagg={},  # shares: all 4 sampled devices; threshold round(0.6 * 4) = 2 -> up to 2 may drop
    )
    # device 3 trains "slowly" and is killed once every device has shared its keys
    coordinator, nodes = federation(spec, base, held_out, folders, delays={3: 600.0})
    wait_for(
        lambda: any(
            e.get("event") == "secagg_stage" and e["stage"] == "share_keys" and e["ok"] == 4
            for e in coordinator.events()
        ),
        180,
    )
    nodes[3].kill()
    events = coordinator.wait(timeout_s=300)

    (round_,) = [e for e in events if e["event"] == "round"]
    assert round_["aggregated"], round_
    assert (round_["selected"], round_["keys_shared"], round_["answered"]) == (4, 4, 3)
    assert round_["dropped_after_keys"] == 1 and round_["late"] + round_["dropped"] == 1
    assert (round_["shares"], round_["threshold"]) == (4, 2)
    assert round_["bytes_up"] > 0 and round_["bytes_up_wire"] > round_["bytes_up"]

    # the same updates, recomputed here (training is seeded by the round), averaged the plain FedAvg way
    deltas, weights = [], []
    for folder in folders[:3]:
        x, y = load_dataset(folder)
        trained = base.train(x, y, epochs=1, lr=0.5, seed=1)
        deltas.append(
            [t.astype(np.float64) - g for t, g in zip(trained.arrays(), base.arrays(), strict=True)]
        )
        weights.append(len(y))
    w = np.array(weights, np.float64) / sum(weights)
    expected = [
        g + sum(wi * d[k] for wi, d in zip(w, deltas, strict=True)) for k, g in enumerate(base.arrays())
    ]
    final = load_final_head(coordinator.job_dir)
    # SecAgg+ quantizes each weighted delta to steps of 2 * clip / 2**22 (stochastic rounding): the mean is
    # off by at most n steps over the summed weight ratios
    step = 2 * spec.secagg.clipping_range / 2**22
    bound = 3 * step / (sum(weights) / SECAGG_MAX_WEIGHT) + 1e-6
    errors = [float(np.abs(f - e).max()) for f, e in zip(final.arrays(), expected, strict=True)]
    assert max(errors) <= bound, (errors, bound)
    assert max(errors) > 0  # it went through the quantized protocol, not a plain copy
    # and it moved the head: the aggregate is not the base
    assert float(np.abs(final.W - base.W).max()) > 100 * bound
