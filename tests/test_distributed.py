"""``torchrun -m lape record`` on two CPU ranks gives the same stats as one process; CLI re-runs skip.

A tiny random LLaMA (``tiny_models.tiny_model``) is saved as a Hugging Face folder with a
character-level tokenizer, next to a two-language ``text`` manifest. Each run is a real
subprocess: the ranks join a gloo group, take every second sequence and all-reduce the counters.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tiny_models import tiny_model_folder

from lape.neurons.stats import ActivationStats

SEQ_LEN = 32
# "aa": 150 tokens -> 5 sequences (4 x 32 + 22 real tokens, the last padded); rank 0 takes
# sequences 0, 2, 4 (a full batch and a batch of one), rank 1 takes 1, 3 (one full batch).
TOKENS = 150
# "bb" runs out of text first: 3 sequences (32, 32 and a padded one), rank 1 gets only one.
TIMEOUT = 300


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 0, f"{' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


def _record_args(work: Path, out: str) -> list[str]:
    return ["--quiet", "record", "--model", str(work / "model"), "--corpus", str(work / "corpus.yaml"), "--out",
            str(work / out), "--tokens-per-language", str(TOKENS), "--seq-len", str(SEQ_LEN),
            "--batch-size", "2"]


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """A model folder, a manifest, and the stats of one process (``one``) and two ranks (``two``)."""
    work = tmp_path_factory.mktemp("distributed")
    tiny_model_folder(work, docs=(40, 3))
    _run([sys.executable, "-m", "lape", *_record_args(work, "one")], cwd=work)
    torchrun = Path(sys.executable).with_name("torchrun")  # the module is its fallback
    launcher = [str(torchrun)] if torchrun.is_file() else [sys.executable, "-m", "torch.distributed.run"]
    _run([*launcher, "--standalone", "--nproc-per-node", "2", "-m", "lape",
          *_record_args(work, "two")], cwd=work)
    return work


def test_the_tiny_model_folder_loads_and_the_shards_differ_in_size(work):
    from lape import load_model
    from lape.corpora import load_corpus

    model, tok = load_model(str(work / "model"))
    assert tok.bos_token_id == 1 and tok.eos_token_id == 2 and tok.pad_token_id == 0
    assert len(tok) <= model.config.vocab_size
    streams = load_corpus(work / "corpus.yaml", tok, tokens_per_language=TOKENS, seq_len=SEQ_LEN)
    n = {lang: len(list(s)) for lang, s in streams.items()}
    assert n == {"aa": 5, "bb": 3}  # odd: rank 0 gets one sequence more than rank 1
    assert streams["aa"].tokens == TOKENS


def test_two_ranks_give_the_same_stats_as_one_process(work):
    one, two = ActivationStats.load(work / "one"), ActivationStats.load(work / "two")
    assert one.languages == two.languages == ["aa", "bb"]
    assert one.meta["languages"] == two.meta["languages"]
    assert one.meta["token_counts"] == two.meta["token_counts"]
    assert one.meta["world_size"] == 1 and two.meta["world_size"] == 2
    assert int(one.token_counts[0]) == TOKENS - 5  # 5 sequences, the first position of each not counted
    assert torch.equal(one.token_counts, two.token_counts)
    assert torch.equal(one.fire_counts, two.fire_counts)
    assert int(one.fire_counts.sum()) > 0
    # float32 batch sums added in another order (other batches per rank): equal up to rounding
    torch.testing.assert_close(one.act_sums, two.act_sums, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(one.fire_sums, two.fire_sums, rtol=1e-5, atol=1e-4)
    # each rank check-pointed its own shard; only rank 0 wrote the artifact
    parts = sorted(p.name for p in (work / "two" / "partial").iterdir())
    assert parts == ["aa.rank0", "aa.rank1", "bb.rank0", "bb.rank1"]
    # the shards: rank 0 took sequences 0, 2, 4 (32 + 32 + 22 tokens), rank 1 sequences 1, 3 (32 + 32),
    # each without its sequences' first positions
    from lape.runningstats import _Checkpoint

    shard = {r: _Checkpoint.load(work / "two" / "partial" / f"aa.rank{r}").state for r in (0, 1)}
    assert [int(shard[r]["token_counts"]) for r in (0, 1)] == [86 - 3, 64 - 2]
    assert torch.equal(shard[0]["fire_counts"] + shard[1]["fire_counts"], one.fire_counts[0])
    assert not torch.equal(shard[0]["fire_counts"], shard[1]["fire_counts"])


def test_cli_rerun_skips_the_finished_recording(work):
    stats = work / "one" / "stats.safetensors"
    before = stats.stat().st_mtime_ns
    proc = _run([sys.executable, "-m", "lape", *_record_args(work, "one")], cwd=work)
    assert "skipped" in proc.stderr + proc.stdout
    assert stats.stat().st_mtime_ns == before  # nothing rewritten
    again = ActivationStats.load(work / "one")
    assert torch.equal(again.fire_counts, ActivationStats.load(work / "two").fire_counts)


RANK_SCRIPT = """
import json, sys
from pathlib import Path
import torch
torch.distributed.init_process_group("gloo")
from lape import RecordConfig, load_model, record
from lape.corpora import load_corpus, load_manifest

work, rank = Path(sys.argv[1]), torch.distributed.get_rank()
model, tok = load_model(str(work / "model"))
manifest = load_manifest(work / "corpus.yaml")
streams = load_corpus(manifest, tok, tokens_per_language={tokens}, seq_len={seq_len})
config = RecordConfig(tokens_per_language={tokens}, seq_len={seq_len}, batch_size=2)
stats = record(model, streams, config, out=work / "split" / f"rank{{rank}}", progress=False)
(work / f"result-rank{{rank}}.json").write_text(json.dumps({{
    "rank": rank, "fire": int(stats.fire_counts.sum()), "tokens": stats.token_counts.tolist(),
    "world": stats.meta["world_size"]}}))
from lape.cli.common import finish_distributed
finish_distributed()  # as `lape record` does: barrier, leave the group, exit before gloo's threads can abort
"""


def test_ranks_that_disagree_about_finished_work_follow_rank_0(work):
    """Without a shared file system rank 1 may not see rank 0's finished stats: it must take
    rank 0's decision (and stats) instead of waiting forever in all_reduce."""
    import json
    import shutil

    (work / "split").mkdir()
    shutil.copytree(work / "two", work / "split" / "rank0")  # complete, same inputs
    (work / "rank_script.py").write_text(RANK_SCRIPT.format(tokens=TOKENS, seq_len=SEQ_LEN))
    torchrun = Path(sys.executable).with_name("torchrun")
    launcher = [str(torchrun)] if torchrun.is_file() else [sys.executable, "-m", "torch.distributed.run"]
    _run([*launcher, "--standalone", "--nproc-per-node", "2", str(work / "rank_script.py"), str(work)], cwd=work)
    lines = [json.loads((work / f"result-rank{r}.json").read_text()) for r in (0, 1)]
    two = ActivationStats.load(work / "two")
    assert sorted(r["rank"] for r in lines) == [0, 1]
    for r in lines:  # both returned rank 0's stored stats
        assert r["fire"] == int(two.fire_counts.sum()) and r["tokens"] == two.token_counts.tolist()
        assert r["world"] == 2
    assert not (work / "split" / "rank1").exists()  # rank 1 recorded nothing


def test_two_ranks_explain_the_same_cards_as_one_process(work):
    """``lape explain`` under torchrun: every rank's running top-k is gathered and merged, so the
    contexts (values, places, windows) are those of one process; firing sums are all-reduced."""
    from lape.explain import NeuronCards

    args = ["--quiet", "explain", "--neuron", "0:3", "--neuron", "1:7", "--neuron", "2:40", "--model", "model",
            "--corpus", "corpus.yaml", "--split", "train", "--tokens-per-language", str(TOKENS), "--seq-len",
            str(SEQ_LEN), "--batch-size", "2", "--k", "3"]
    _run([sys.executable, "-m", "lape", *args, "--out", "explain-one"], cwd=work)
    torchrun = Path(sys.executable).with_name("torchrun")
    launcher = [str(torchrun)] if torchrun.is_file() else [sys.executable, "-m", "torch.distributed.run"]
    _run([*launcher, "--standalone", "--nproc-per-node", "2", "-m", "lape", *args, "--out", "explain-two"], cwd=work)
    one, two = NeuronCards.load(work / "explain-one"), NeuronCards.load(work / "explain-two")
    assert one.meta["world_size"] == 1 and two.meta["world_size"] == 2
    for name in ("values", "serials", "tokens"):
        assert torch.equal(one.contexts[name], two.contexts[name]), name
    torch.testing.assert_close(one.contexts["acts"], two.contexts["acts"])
    assert torch.equal(one.firing["fire_counts"], two.firing["fire_counts"])
    assert int((one.contexts["serials"] >= 0).sum()) == 2 * 3 * 3  # every slot filled: the test compares contexts
    assert (work / "explain-two" / "index.html").is_file()


MASSIVE_SCRIPT = """
import json, sys
from pathlib import Path
import torch
world = int(__import__("os").environ.get("WORLD_SIZE", "1"))
if world > 1:
    torch.distributed.init_process_group("gloo")
from lape import load_model
from lape.corpora import load_corpus, load_manifest
from lape.regions.massive import find_massive_dims

work = Path(sys.argv[1])
model, tok = load_model(str(work / "model"))
with torch.no_grad():  # plant a massive channel on the first token, as real models have
    model.model.layers[1].mlp.down_proj.weight[5] *= 400.0
streams = load_corpus(load_manifest(work / "corpus.yaml"), tok, tokens_per_language={tokens}, seq_len={seq_len})
m = find_massive_dims(model, streams, ratio=20.0, max_sequences=7, batch_size=2)
if world == 1 or torch.distributed.get_rank() == 0:
    (work / f"massive-{{world}}.json").write_text(json.dumps(m.to_dict()))
if world > 1:
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()
"""


def test_two_ranks_find_the_same_massive_channels_as_one_process(work):
    """find_massive_dims runs on tally: two ranks take every second sequence and combine their
    peaks (the larger; on ties the earlier sequence), giving one process's result, peaks per layer,
    positions and tokens included."""
    import json

    (work / "massive_script.py").write_text(MASSIVE_SCRIPT.format(tokens=TOKENS, seq_len=SEQ_LEN))
    _run([sys.executable, str(work / "massive_script.py"), str(work)], cwd=work)
    torchrun = Path(sys.executable).with_name("torchrun")
    launcher = [str(torchrun)] if torchrun.is_file() else [sys.executable, "-m", "torch.distributed.run"]
    _run([*launcher, "--standalone", "--nproc-per-node", "2", str(work / "massive_script.py"), str(work)], cwd=work)
    one, two = (json.loads((work / f"massive-{w}.json").read_text()) for w in (1, 2))
    assert 5 in one["dims"]  # the planted channel is found: the comparison is not of two empty results
    assert one == two
