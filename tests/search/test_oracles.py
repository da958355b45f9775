import pytest
import yaml

from latbench.core.errors import LatbenchError, UsageError
from latbench.search.algorithm import frontier
from latbench.search.oracles import (
    CallableOracle,
    ProxyOracle,
    TableOracle,
    load_oracle,
    published_accuracy,
    published_entries,
    read_accuracy_file,
)
from latbench.space import Arch, SearchSpace, StageArch, named_arch

S0 = named_arch("efficientformerv2_s0")


def test_proxy_is_documented_fit_and_labelled():
    o = load_oracle("proxy")
    assert isinstance(o, ProxyOracle) and o.is_proxy
    assert "PROXY" in o.label() and o.to_dict()["is_proxy"] is True
    published = {"efficientformerv2_s0": 76.2, "efficientformerv2_s1": 79.7, "efficientformerv2_s2": 82.0,
                  "efficientformerv2_l": 83.5}
    for name, top1 in published.items():
        assert o(named_arch(name)) == pytest.approx(top1, abs=0.25)


def test_proxy_drops_for_every_shrinking_action():
    o = ProxyOracle()
    base = o(S0)
    moves = frontier(S0, SearchSpace.default())
    assert moves
    assert all(o(a) < base for _, a in moves)


def write_module(tmp_path, name, body):
    (tmp_path / f"{name}.py").write_text(body)


def test_callable_oracle_is_imported_and_called(tmp_path, monkeypatch):
    write_module(tmp_path, "lb_eval_ok", "calls = []\ndef top1(arch):\n    calls.append(arch)\n"
                                          "    return 70.0 + sum(arch.depths) / 10\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    o = load_oracle("lb_eval_ok:top1")
    assert isinstance(o, CallableOracle) and not o.is_proxy
    assert o(S0) == pytest.approx(71.4)
    o(S0)
    import lb_eval_ok

    assert len(lb_eval_ok.calls) == 1  # cached: a supernet evaluation is not repeated
    assert o.label() == "oracle lb_eval_ok:top1"


@pytest.mark.parametrize(
    "spec, match",
    [
        ("lb_eval_bad:top1:x", "pkg.module:function"),
        ("1mod:fn", "pkg.module:function"),
        ("lb_eval_bad:", "pkg.module:function"),
        ("lb_no_such_module_xyz:top1", "cannot import module"),
        ("lb_eval_bad:missing", "has no attribute 'missing'"),
        ("lb_eval_bad:CONSTANT", "not callable"),
        ("lb_eval_broken:top1", "importing 'lb_eval_broken' failed: ZeroDivisionError"),
        ("nonsense", "unknown accuracy oracle"),
        ("", "unknown accuracy oracle"),
    ],
)
def test_bad_oracle_specs_are_one_line_usage_errors(tmp_path, monkeypatch, spec, match):
    write_module(tmp_path, "lb_eval_bad", "CONSTANT = 3\ndef top1(arch):\n    return 50.0\n")
    write_module(tmp_path, "lb_eval_broken", "x = 1 / 0\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(UsageError, match=match) as err:
        load_oracle(spec)
    assert "\n" not in str(err.value)


def test_callable_returning_nonsense_or_raising(tmp_path, monkeypatch):
    write_module(tmp_path, "lb_eval_weird", "def big(arch):\n    return 150\n"
                                             "def text(arch):\n    return 'good'\n"
                                             "def boom(arch):\n    raise RuntimeError('GPU fell over\\nsecond line')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(UsageError, match="between 0 and 100"):
        load_oracle("lb_eval_weird:big")(S0)
    with pytest.raises(UsageError, match="not a number"):
        load_oracle("lb_eval_weird:text")(S0)
    with pytest.raises(LatbenchError, match="RuntimeError: GPU fell over") as err:
        load_oracle("lb_eval_weird:boom")(S0)
    assert "\n" not in str(err.value) and err.value.exit_code == 1


def test_accuracy_csv_by_name_and_digest_prefix(tmp_path):
    path = tmp_path / "acc.csv"
    path.write_text(f"name,digest,top1,source\ns0-copy,{S0.digest()[:12]},75.9,my eval\nother,,61.5,\n")
    table = read_accuracy_file(path)
    assert table.lookup(arch=S0).top1 == 75.9  # by digest, whatever the arch is called
    assert table.lookup(name="other").top1 == 61.5
    assert table.lookup(name="other").source == "acc.csv (user-provided)"
    assert table.lookup(name="s0-copy").source == "my eval"
    assert table.lookup(name="nobody") is None
    oracle = load_oracle(str(path))
    assert isinstance(oracle, TableOracle) and oracle(S0) == 75.9
    with pytest.raises(UsageError, match="no entry for"):
        oracle(named_arch("efficientformerv2_l"))


def test_accuracy_yaml_mapping_and_list(tmp_path):
    a = tmp_path / "a.yaml"
    a.write_text(yaml.safe_dump({"efficientformerv2_s0": 76.0, "cand": {"top1": 70, "source": "paper X"}}))
    t = read_accuracy_file(a)
    assert t.lookup(name="efficientformerv2_s0").top1 == 76.0 and t.lookup(name="cand").source == "paper X"
    b = tmp_path / "b.yaml"
    b.write_text(yaml.safe_dump([{"digest": S0.digest(), "accuracy": 74}]))
    assert read_accuracy_file(b).lookup(arch=S0).top1 == 74


@pytest.mark.parametrize(
    "name, text, match",
    [
        ("a.csv", "name,score\nx,70\n", "'top1'"),
        ("a.csv", "model,top1\nx,70\n", "'name' or 'digest'"),
        ("a.csv", "name,top1\nx,seventy\n", "not a number"),
        ("a.csv", "name,top1\nx,170\n", "between 0 and 100"),
        ("a.csv", "name,top1\nx,70\nx,71\n", "appears twice"),
        ("a.csv", "name,top1\n\"x,70\n", "not a valid CSV"),
        ("a.yaml", "[1, 2]\n", "expected a mapping"),
        ("a.yaml", "- {name: x}\n", "needs a 'top1'"),
        ("a.yaml", "- {name: x, top1: 70, epochs: 3}\n", "unknown key 'epochs'"),
        ("a.yaml", "- {digest: xyz, top1: 70}\n", "not 10-64 hex"),
        ("a.yaml", "x: [70\n", "not valid YAML"),
        ("a.yaml", "42\n", "expected a mapping"),
        ("a.txt", "x 70\n", "expected a .csv"),
    ],
)
def test_malformed_accuracy_files(tmp_path, name, text, match):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(UsageError, match=match) as err:
        read_accuracy_file(path)
    assert "\n" not in str(err.value)


def test_missing_accuracy_file(tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        read_accuracy_file(tmp_path / "none.csv")


def test_published_figures_are_labelled_and_complete():
    s0 = published_accuracy("efficientformerv2_s0")
    assert s0.top1 == 76.2 and s0.published and s0.source.startswith("published:")
    assert published_accuracy("mobilenetv2_100").source == "published: MobileNetV2 paper"
    assert published_accuracy("mobilenetv2_100").top1 == 71.8
    assert {m: published_accuracy(m).top1 for m in ("mobilevit_xxs", "mobilevit_xs", "mobilevit_s")} == {
        "mobilevit_xxs": 69.0, "mobilevit_xs": 74.8, "mobilevit_s": 78.4}
    assert "this candidate runs at 224" in published_accuracy("mobilevit_xs", resolution=224).source
    # An arch file identical to S1 gets S1's figure; an unrelated name gets none.
    assert published_accuracy("my-arch", named_arch("efficientformerv2_s1")).top1 == 79.7
    assert published_accuracy("my-arch", None) is None
    # An edited arch file that kept the name of S0 is not S0.
    edited = Arch(S0.stages[:3] + (StageArch(176, (4, 4), 2),), 224, "efficientformerv2_s0")
    assert published_accuracy("efficientformerv2_s0", edited) is None
    # Every entry has a source, and the 300-epoch figures are kept too.
    entries = published_entries()
    assert all(e.get("source") for e in entries)
    by_epochs = {(e["model"], e.get("epochs")): e["top1"] for e in entries}
    assert by_epochs[("efficientformerv2_s0", 300)] == 75.7 and by_epochs[("efficientformerv2_l", 300)] == 83.3
    assert by_epochs[("efficientformerv2_s1", 300)] == 79.0 and by_epochs[("efficientformerv2_s2", 300)] == 81.6
    assert by_epochs[("efficientformerv2_l", 450)] == 83.5
