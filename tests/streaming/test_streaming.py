"""Streamed quantization equals the in-memory pipeline, resumes after an interruption, and says what it refuses."""

import json
import time
import warnings

import pytest
import torch

import quantpilot as qp
from quantpilot.persistence import SHARD_INDEX
from quantpilot.streaming import quantize_checkpoint

from ._decoders import FAMILIES, calibration_ids, tiny_config, tiny_model

# AWQ's search replays each attention and MLP 20 times per group: the clip search and a large sample add
# nothing to what this checks (the same statistics and choices block by block), so the test skips them.
RECIPES = {
    "gptq": lambda: qp.Recipe.preset("gptq-w4-g128"),
    "awq": lambda: qp.Recipe.preset("awq-w4-g128").replace(steps=(qp.steps.AWQ(clip=False, search_tokens=256),)),
}
_CACHE: dict = {}


def _in_memory(kind: str, recipe, ids: torch.Tensor, batch_size: int) -> torch.nn.Module:
    key = (kind, str(recipe), ids.shape, batch_size)
    if key in _CACHE:
        return _CACHE[key]
    model = tiny_model(kind)
    qmodel = qp.quantize(model, recipe)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with qp.calibrate(qmodel):
            for chunk in ids.split(batch_size):
                qmodel(input_ids=chunk)
    _CACHE[key] = qp.freeze(qmodel)
    return _CACHE[key]


def _meta_skeleton(kind: str) -> torch.nn.Module:
    import transformers

    with torch.device("meta"):
        return transformers.AutoModelForCausalLM.from_config(tiny_config(kind)).eval()


def _same_state(a: torch.nn.Module, b: torch.nn.Module) -> list[str]:
    sa, sb = a.state_dict(), b.state_dict()
    assert sorted(sa) == sorted(sb)
    return [k for k in sa if not torch.equal(sa[k], sb[k])]


@pytest.mark.parametrize("kind", FAMILIES, ids=FAMILIES)
def test_rtn_streamed_codes_equal_in_memory_and_load_on_a_meta_skeleton(kind, saved_decoder, tmp_path):
    blocks = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantize_checkpoint(saved_decoder(kind), "rtn-w4-g128", out=tmp_path / "q", on_block=blocks.append)
    assert [b["block"] for b in blocks] == [-1, 0, 1]
    index = json.loads((tmp_path / "q" / SHARD_INDEX).read_text())
    assert len(set(index["weight_map"].values())) == 3  # one shard outside the blocks, one per block
    loaded = qp.load(_meta_skeleton(kind), tmp_path / "q")
    assert not _same_state(loaded, _in_memory(kind, "rtn-w4-g128", calibration_ids(1), 1))


@pytest.mark.parametrize("method", sorted(RECIPES), ids=sorted(RECIPES))
def test_data_fitted_steps_streamed_equal_in_memory(method, saved_decoder, tmp_path):
    # The same batches, block by block from disk: the in-memory GPTQ's sequential semantics (each block's
    # Hessians from the quantized prefix) and AWQ's float statistics are reproduced exactly.
    ids, recipe = calibration_ids(8, 32), RECIPES[method]()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantize_checkpoint(saved_decoder("llama"), recipe, ids, out=tmp_path / "q", batch_size=4)
    loaded = qp.load(tiny_model("llama", seed=3), tmp_path / "q")
    assert not _same_state(loaded, _in_memory("llama", recipe, ids, 4))


def test_a_quantized_token_table_streams_with_its_tied_head(saved_decoder, tmp_path):
    # GPT-2 ties its head to the table: the streamed run packs both from one copy of the codes, as the
    # in-memory quantize does, and the folder reloads on a meta skeleton with the tie kept.
    table = qp.steps.QuantizeEmbeddings(bits=6, group_size=16, skip=("transformer.wpe",))
    recipe = qp.Recipe.preset("rtn-w4-g128").replace(steps=(table,))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantize_checkpoint(saved_decoder("gpt2"), recipe, out=tmp_path / "q")
    loaded = qp.load(_meta_skeleton("gpt2"), tmp_path / "q")
    assert loaded.lm_head.weight_packed is loaded.transformer.wte.weight_packed
    assert loaded.transformer.wte.weight_spec.dtype.value == "uint6"
    assert not _same_state(loaded, _in_memory("gpt2", recipe, calibration_ids(1), 1))


def test_a_killed_gptq_run_resumes_after_the_last_finished_block(saved_decoder, tmp_path):
    ids, src = calibration_ids(8, 32), saved_decoder("llama")

    def stop_after_block_0(info):
        if info["block"] == 0:
            raise KeyboardInterrupt

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(KeyboardInterrupt):
            quantize_checkpoint(src, "gptq-w4-g128", ids, out=tmp_path / "q", batch_size=4, on_block=stop_after_block_0)
        assert not (tmp_path / "q" / "quantpilot.json").exists()  # nothing loadable half-written
        before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "q").glob("model-*.safetensors")}
        assert len(before) == 2
        time.sleep(0.01)
        done = []
        quantize_checkpoint(src, "gptq-w4-g128", ids, out=tmp_path / "q", batch_size=4, on_block=done.append)
    assert [d["block"] for d in done] == [1]  # only the unfinished block ran again
    assert all((tmp_path / "q" / n).stat().st_mtime_ns == t for n, t in before.items())
    assert not (tmp_path / "q" / ".quantpilot-stream").exists()
    assert not _same_state(
        qp.load(_meta_skeleton("llama"), tmp_path / "q"), _in_memory("llama", RECIPES["gptq"](), ids, 4)
    )


def test_a_different_job_in_an_unfinished_folder_is_refused(saved_decoder, tmp_path):
    def stop(info):
        raise KeyboardInterrupt

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(KeyboardInterrupt):
            quantize_checkpoint(saved_decoder("llama"), "rtn-w4-g128", out=tmp_path / "q", on_block=stop)
        with pytest.raises(ValueError, match="unfinished streamed run of another"):
            quantize_checkpoint(saved_decoder("llama"), "w8a16", out=tmp_path / "q")


@pytest.mark.parametrize(
    ("recipe", "calib", "match"),
    [
        ("int8-static", None, "weight-only or dynamic recipes"),
        ("smoothquant-w8a8", None, "at most one GPTQ or AWQ step"),
        ("gptq-w4-g128", None, "runs on calibration data"),
        ("gptq-w4-g128", torch.zeros(2, 8, dtype=torch.long), "at least 256 calibration tokens"),
        ("rtn-w4-g128", torch.zeros(8), None),
    ],
    ids=["static", "smoothquant", "no-data", "too-few-tokens", "rtn-ignores-data"],
)
def test_recipe_and_data_errors(recipe, calib, match, saved_decoder, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if match is None:
            quantize_checkpoint(saved_decoder("llama"), recipe, calib, out=tmp_path / "q")
            return
        with pytest.raises(ValueError, match=match):
            quantize_checkpoint(saved_decoder("llama"), recipe, calib, out=tmp_path / "q")


def test_folder_errors(saved_decoder, tmp_path):
    with pytest.raises(ValueError, match="has no config.json"):
        quantize_checkpoint(tmp_path, "rtn-w4-g128", out=tmp_path / "q")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("x")
    with pytest.raises(ValueError, match="not empty"):
        quantize_checkpoint(saved_decoder("gpt2"), "rtn-w4-g128", out=tmp_path / "busy")


def test_unknown_layout_names_what_was_not_found():
    from quantpilot.streaming import find_block_list

    net = torch.nn.Sequential(torch.nn.Linear(2, 2))
    net.mixed = torch.nn.ModuleList([torch.nn.Linear(2, 2), torch.nn.ReLU()])
    with pytest.raises(
        ValueError, match=r"no nn.ModuleList of identical decoder blocks \(lists found: \['mixed \(2\)'\]\)"
    ):
        find_block_list(net)


def test_a_shard_written_after_the_last_record_is_written_again(saved_decoder, tmp_path):
    # Killed between renaming a shard into place and recording it: the rerun replaces that shard.
    def stop(info):
        if info["block"] == 0:
            raise KeyboardInterrupt

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(KeyboardInterrupt):
            quantize_checkpoint(saved_decoder("gpt2"), "rtn-w4-g128", out=tmp_path / "q", on_block=stop)
        (tmp_path / "q" / "model-00003-of-00003.safetensors").write_bytes(b"half")
        quantize_checkpoint(saved_decoder("gpt2"), "rtn-w4-g128", out=tmp_path / "q")
    assert qp.load(_meta_skeleton("gpt2"), tmp_path / "q")
