"""Pure pieces: selectors, hardware fit, wave sizes and membership, failure detection, blob store."""

from __future__ import annotations

import io

import pytest

from edgefleet.errors import InputError, IntegrityError, NotFoundError
from edgefleet.server._blobs import FileBlobStore
from edgefleet.server._fit import FIT_FIELDS, FitResult, VariantSpec, choose_variant, fit_key
from edgefleet.server._heartbeat import failure_of
from edgefleet.server._selector import Selector, device_attrs
from edgefleet.server._waves import admission_order, member_hash, wave_size


def attrs(cls="pi4", **tags):
    return device_attrs(device_id="dev-1", name="n", device_class=cls, arch="aarch64", tags=tags)


@pytest.mark.parametrize(
    ("sel", "a", "hit"),
    [
        ("class=pi4 region=eu-*", attrs(region="eu-west"), True),
        ("class=pi4 region=eu-*", attrs(region="us-east"), False),
        ("class=pi4 region=eu-*", attrs("cpu", region="eu-west"), False),
        ("region!=eu-*", attrs(region="us-east"), True),
        ("region!=eu-*", attrs(), True),  # no tag: it is not eu-*
        ("region=*", attrs(), False),  # no tag: it matches no value
        ("class=cpu,pi4", attrs(), True),
        ("arch=aarch64 id=dev-?", attrs(), True),
        ("", attrs(), True),
        ("*", attrs(), True),
    ],
)
def test_selector_matching(sel, a, hit):
    assert Selector.parse(sel).matches(a) is hit


@pytest.mark.parametrize("bad", ["class", "=pi4", "class=", "a b=c", "k==v", "x" * 1100])
def test_malformed_selectors(bad):
    with pytest.raises(InputError) as e:
        Selector.parse(bad)
    assert "key=glob" in e.value.hint


@pytest.mark.parametrize(
    ("a", "b", "overlap"),
    [
        ("region=eu-*", "region=us-*", False),
        ("region=eu-*", "region=eu-west", True),
        ("region=eu-west", "region=eu-north", False),
        ("class=pi4", "region=eu-*", True),
        ("class=pi4,cpu", "class=jetson", False),
        ("*", "class=pi4", True),
        ("region=*-west", "region=*-north", False),
        ("region!=eu-*", "region=eu-west", True),  # conservative
    ],
)
def test_selector_overlap(a, b, overlap):
    assert Selector.parse(a).may_overlap(Selector.parse(b)) is overlap
    assert Selector.parse(b).may_overlap(Selector.parse(a)) is overlap


CPU = VariantSpec(1, "cpu-int8", ("cpu-int8", "cpu"), {"onnxruntime": ">=1.16"})
CPU_FP32 = VariantSpec(2, "cpu", ("cpu",), {"onnxruntime": ">=1.16", "isa_flags": ["avx512f"]})
PI = VariantSpec(
    3,
    "pi4",
    ("pi4",),
    {
        "onnxruntime": ">=1.17,<2",
        "min_ram_mb": 2048,
        "isa_flags": ["neon"],
        "execution_providers": ["CPUExecutionProvider"],
    },
)


def hw(cls="cpu", ram=4096, ort="1.20.0", isa=("avx2",), providers=("CPUExecutionProvider",)):
    return {
        "device_class": cls,
        "ram_mb": ram,
        "onnxruntime_version": ort,
        "isa_flags": list(isa),
        "providers": list(providers),
    }


def test_variant_named_like_the_class_is_preferred_when_it_fits():
    assert choose_variant([CPU, CPU_FP32], hw(isa=("avx512f",))).variant.variant == "cpu"
    fit = choose_variant([CPU, CPU_FP32], hw())  # no avx512f: the int8 build
    assert fit.variant.variant == "cpu-int8"


@pytest.mark.parametrize(
    ("device", "needle"),
    [
        (hw("pi4", ram=1024, isa=("neon",)), "needs 2048 MB RAM, the device has 1024 MB"),
        (hw("pi4", ort="2.1.0", isa=("neon",)), "needs onnxruntime >=1.17,<2, the device has 2.1.0"),
        (hw("pi4", ort=None, isa=("neon",)), "did not report its version"),
        (hw("pi4", ort="banana", isa=("neon",)), "invalid onnxruntime version"),
        (hw("pi4"), "needs CPU flags neon"),
        (hw("pi4", isa=("neon",), providers=("CoreMLExecutionProvider",)), "runs on CPUExecutionProvider"),
        (hw("jetson"), "no variant for device class 'jetson'"),
    ],
)
def test_does_not_fit_says_why(device, needle):
    fit = choose_variant([CPU, PI], device)
    assert not fit.fits and needle in fit.reason


def test_fit_key_holds_everything_the_fit_reads():
    """The engine caches fits by ``fit_key``: a device description reduced to the key's fields must fit
    the same way as the full one, and descriptions that fit differently must have different keys."""
    noise = {"hostname": "x", "cpu_model": "Cortex-A72", "disk_gb": 32, "tags": ["a"]}
    devices = [
        hw(),
        hw(isa=("avx512f",)),
        hw("pi4", ram=1024, isa=("neon",)),
        hw("pi4", isa=("neon",)),
        hw("pi4", ort="2.1.0", isa=("neon",)),
        hw("pi4", ort="banana", isa=("neon",)),
        hw("pi4", isa=("neon",), providers=("CoreMLExecutionProvider",)),
        hw("jetson"),
    ]
    fits = [choose_variant([CPU, CPU_FP32, PI], {**d, **noise}) for d in devices]
    for d, fit in zip(devices, fits, strict=True):
        reduced = dict(zip(FIT_FIELDS, fit_key(d), strict=True))
        again = choose_variant(
            [CPU, CPU_FP32, PI], {k: list(v) if isinstance(v, tuple) else v for k, v in reduced.items()}
        )
        assert again == fit
        assert fit_key({**d, **noise}) == fit_key(d)
    assert len({fit_key(d) for d in devices}) == len({(f.variant and f.variant.id, f.reason) for f in fits})


def test_wave_sizes():
    assert wave_size(1000, 1, 3) == 10
    assert wave_size(1000, 5, 3) == 50
    assert wave_size(20, 1, 3) == 3  # never fewer than the gate's minimum
    assert wave_size(2, 1, 3) == 2  # nor more than there are
    assert wave_size(7, 100, 3) == 7
    assert wave_size(0, 50, 3) == 0
    assert wave_size(100, 33.3, 1) == 34


def test_member_hash_is_stable_and_spreads():
    ids = [f"dev-{i}" for i in range(1000)]
    order = sorted(ids, key=lambda d: member_hash("ro-a", d))
    assert order == sorted(ids, key=lambda d: member_hash("ro-a", d))
    assert order[:10] != sorted(ids, key=lambda d: member_hash("ro-b", d))[:10]  # per rollout
    first = {int(d.split("-")[1]) for d in order[:100]}
    assert min(first) < 100 and max(first) > 900  # not the enrollment order


def test_admission_order_puts_one_device_of_every_hardware_class_first():
    """A release wrong on one class only must meet its gates in the first wave: whatever the hashes say,
    the first candidates cover every (variant, class) stratum not yet admitted; the rest keep hash order."""
    from types import SimpleNamespace

    cpu, pi4 = VariantSpec(1, "cpu", ("cpu", "jetson"), "onnx"), VariantSpec(2, "pi4", ("pi4",), "onnx")
    classes = {"jetson": cpu, "cpu": cpu, "pi4": pi4}
    devs = [(f"dev-{i}", cls) for i in range(60) for cls in [("jetson", "cpu", "pi4")[i % 3]]]
    cands = [(SimpleNamespace(id=i, device_class=c), FitResult(classes[c], "fits"), None) for i, c in devs]
    for rid in ("ro-a", "ro-b", "ro-c", "ro-d"):
        order = admission_order(rid, cands, covered=set())
        assert {d.device_class for d, _, _ in order[:3]} == {"jetson", "cpu", "pi4"}, rid
        by_hash = sorted(cands, key=lambda c: member_hash(rid, c[0].id))
        assert [c[0].id for c in order[3:]] == [c[0].id for c in by_hash if c not in order[:3]]
        assert sorted(c[0].id for c in order) == sorted(i for i, _ in devs)  # nobody lost or doubled
    # strata already admitted in an earlier wave do not jump the queue again
    order = admission_order("ro-a", cands, covered={(1, "jetson"), (1, "cpu")})
    assert order[0][0].device_class == "pi4"
    assert [c[0].id for c in order[1:]] == [
        c[0].id for c in sorted(cands, key=lambda c: member_hash("ro-a", c[0].id)) if c is not order[0]
    ]


@pytest.mark.parametrize(
    ("state", "events", "expected"),
    [
        ("idle", [], None),
        ("idle", [{"event": "activated", "version": "2.0.0"}], None),
        (
            "idle",
            [{"event": "refused", "sha256": "abcdef012345", "reason": "golden"}],
            ("sha:abcdef012345", "golden"),
        ),
        (
            "idle",
            [{"event": "rolled_back", "to": "1.0.0", "auto": True, "reason": "errors"}],
            ("@active", "errors"),
        ),
        ("idle", [{"event": "rolled_back", "to": "1.0.0", "auto": False}], None),  # the server asked for it
        ("idle", [{"type": "download_failed", "version": "2.0.0"}], ("2.0.0", "download_failed")),
        ("failed", [], ("*", "failed")),
    ],
)
def test_failure_detection_from_reports(state, events, expected):
    assert failure_of(state, events) == expected


def test_blob_store_is_content_addressed_and_checks_hashes(tmp_path):
    store = FileBlobStore(tmp_path / "blobs")
    sha = store.put(b"hello")
    assert store.put(b"hello") == sha and store.get(sha) == b"hello" and store.exists(sha)
    assert store.path(sha).read_bytes() == b"hello"
    assert (
        store.put_stream(io.BytesIO(b"x" * 3_000_000))
        == __import__("hashlib").sha256(b"x" * 3_000_000).hexdigest()
    )
    with pytest.raises(IntegrityError):
        store.put_stream(io.BytesIO(b"abc"), expected_sha256="0" * 64)
    assert not any(p.name.startswith(".incoming") for p in (tmp_path / "blobs").iterdir())
    store.path(sha).write_bytes(b"tampered")
    with pytest.raises(IntegrityError):
        store.get(sha)
    with pytest.raises(NotFoundError):
        store.get("../../etc/passwd")
    assert store.delete(sha) and not store.exists(sha)
