"""Variant names, device profiles and budgets."""

from __future__ import annotations

import pytest

from edgefleet.errors import ConfigError
from edgefleet.optimize import DeviceProfile, Variant
from edgefleet.optimize._spec import Budget


@pytest.mark.parametrize(
    ("name", "kind", "per_channel", "calibration", "fmt"),
    [
        ("fp32", "fp32", False, None, "qdq"),
        ("fp16", "fp16", False, None, "qdq"),
        ("dynamic-int8", "dynamic-int8", False, None, "qdq"),
        ("dynamic-int8-pc", "dynamic-int8", True, None, "qdq"),
        ("static-int8-pc-entropy", "static-int8", True, "entropy", "qdq"),
        ("static-int8-pt-percentile", "static-int8", False, "percentile", "qdq"),
        ("Static-Int8-PT-MinMax-QOP", "static-int8", False, "minmax", "qoperator"),
    ],
)
def test_variant_names_parse(name, kind, per_channel, calibration, fmt):
    v = Variant.parse(name)
    assert (v.kind, v.per_channel, v.calibration, v.quant_format) == (kind, per_channel, calibration, fmt)


def test_int4_and_pruned_parameters():
    assert Variant.parse("int4").block_size is None
    assert Variant.parse("int4-b64").block_size == 64
    assert Variant.parse("pruned-70").sparsity == pytest.approx(0.7)


@pytest.mark.parametrize(
    "bad", ["int8", "static-int8", "static-int8-pc-kl", "int4-b20", "pruned-0", "pruned-100", ""]
)
def test_unknown_variant_names_are_refused_with_the_known_forms(bad):
    with pytest.raises(ConfigError) as e:
        Variant.parse(bad)
    assert e.value.hint


def test_profile_from_yaml(tmp_path):
    p = tmp_path / "p.yaml"
    p.write_text(
        "name: pi4\ncores: 4\narch: aarch64\nisa_flags: [asimd, asimddp]\nonnxruntime: '1.17'\n"
        "latency_budget_ms: 12.5\nram_budget_mb: 300\nsize_budget_mb: 4\n"
    )
    prof = DeviceProfile.from_yaml(p)
    assert prof.cores == 4 and prof.is_arm and prof.has_int8_dot
    b = Budget.from_profile(prof, max_drop=0.5, min_quality=90)
    assert (b.latency_p95_ms, b.ram_mb, b.size_mb, b.max_drop, b.min_quality) == (12.5, 300, 4, 0.5, 90)


def test_x86_without_vnni_has_no_int8_dot():
    prof = DeviceProfile(arch="x86_64", isa_flags=["avx2", "fma"])
    assert not prof.is_arm and not prof.has_int8_dot
    assert DeviceProfile(arch="x86_64", isa_flags=["avx512_vnni"]).has_int8_dot


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("cores: [1, 2", "not valid YAML"),
        ("- a\n- b\n", "must be a YAML mapping"),
        ("cores: 0\n", "cores"),
        ("cores: 2\nturbo: true\n", "turbo"),
        ("onnxruntime: latest\n", "onnxruntime"),
        ("execution_providers: []\n", "execution_providers"),
    ],
)
def test_bad_profiles_name_the_problem(tmp_path, text, fragment):
    p = tmp_path / "p.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError) as e:
        DeviceProfile.from_yaml(p)
    assert fragment in e.value.message
    assert e.value.hint


def test_missing_and_oversized_profiles(tmp_path):
    with pytest.raises(ConfigError, match="cannot be read"):
        DeviceProfile.from_yaml(tmp_path / "nope.yaml")
    big = tmp_path / "big.yaml"
    big.write_text("# " + "x" * 100_000)
    with pytest.raises(ConfigError, match="bytes"):
        DeviceProfile.from_yaml(big)
