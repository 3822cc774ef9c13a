"""A fast slice of the architecture zoo (the full matrix is `make zoo`, benchmarks/zoo.py).

One decoder, one encoder, one encoder-decoder and one vision model, each through int8-static with
save/load bit-exactness, w8a16, and (decoders) RTN W4 g64 followed by generate(): no cell may crash,
come back wrong, or change the user's float model.
"""

from __future__ import annotations

import pytest

from quantpilot_testbed.zoo import FAMILIES, run_family

FAST = ("llama", "bert", "bart", "vit")
OPERATIONS = ("int8-static", "save/load", "w8a16", "rtn+generate")


@pytest.mark.parametrize("family", FAST, ids=FAST)
def test_zoo_family_has_no_crash(family):
    fam = FAMILIES[family]
    if fam.skip:
        pytest.skip(fam.skip)
    cells = run_family(fam, OPERATIONS)
    bad = {op: cell.line() for op, cell in cells.items() if cell.status in ("CRASH", "WRONG", "refused")}
    assert not bad, bad
    assert cells["save/load"].detail == "bit-exact"
    if fam.kind == "decoder":
        assert cells["rtn+generate"].status in ("ok", "warned")


def test_every_family_is_built_or_skipped_with_a_reason():
    for name, fam in FAMILIES.items():
        assert (fam.make is None) == bool(fam.skip), name


MOE_OPERATIONS = ("w8a16", "w4a16-g128", "save/load w4")  # RTN + generate: tests/nn/test_experts.py


def test_zoo_moe_family_quantizes_its_experts():
    # Mixtral's experts are 3-D stacks, not nn.Linear: every cell must run and count them as quantized.
    fam = FAMILIES["mixtral"]
    if fam.skip:
        pytest.skip(fam.skip)
    cells = run_family(fam, MOE_OPERATIONS)
    bad = {op: cell.line() for op, cell in cells.items() if cell.status not in ("ok", "warned")}
    assert not bad, bad
    assert cells["save/load w4"].detail == "bit-exact"
    share = float(cells["w8a16"].detail.split("% of weights quantized")[0].split()[-1])
    assert share > 95.0, cells["w8a16"].detail  # 17.2 % while the expert stacks stayed float
