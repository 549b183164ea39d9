"""Chain sensitivity: does a cheaper reverse chain change the replicate ratio?

  python -m mem_diffusion.chains --config=configs/quickstart.py \\
      --chains=full,50,25,10,ddim25

The full 4000-step chain for 4,000 samples costs about 40% of a whole
training run, so the study would rather sample a respaced or DDIM chain,
but only if the answer it measures does not move. This scores ONE trained
model (the workdir's final EMA params, trained by the usual runner first if
needed) under each chain, with the same sample count and sampling seed, and
writes a table:

  <workdir>/chains/<chain>/       a sample+eval workdir per chain (resumable)
  <workdir>/chains/params.msgpack the EMA params all chains sample from
  <workdir>/chains/params.msgpack.json  their checkpoint's step and EMA digest
  <workdir>/chains/summary.md     ratio, its interval, blend ratio and quality per chain
  <workdir>/chains/summary.json

Each chain's workdir goes through the stage runner with
`sampling.params_file` pointing at the exported params, so a rerun skips the
chains already scored and a changed sample count redoes them.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

from absl import app
from absl import flags
import ml_collections
from ml_collections import config_flags

from mem_diffusion.run import cli
from mem_diffusion import errors
from mem_diffusion import files
from mem_diffusion.run import cpu_tuning
from mem_diffusion.run import runtime
from mem_diffusion.run.workdir import Workdir

FLAGS = flags.FLAGS


def chain_name(spec: str) -> str:
  """'' -> 'full', '50' -> '50', 'ddim25' -> 'ddim25' (a directory name)."""
  return spec or "full"


def parse_chains(text: str) -> list[str]:
  """'full,50,ddim25' -> ['', '50', 'ddim25'] (respacing specs; '' = full chain)."""
  items = [c.strip() for c in text.split(",")]
  specs = ["" if c == "full" else c for c in items]
  if "" in items or len(set(specs)) != len(specs):  # '' is no chain: 'full' names that one
    raise errors.ConfigError(f"--chains={text!r}: expected distinct, non-empty chains, "
                             "e.g. full,50,ddim25")
  return specs


def export_params(config: ml_collections.ConfigDict, workdir: str, path: str) -> dict[str, Any]:
  """Writes the workdir's latest EMA params to `path`; returns their record.

  Written again whenever the checkpoint's EMA digest or the file no longer
  match `<path>.json`: a file left from a shorter training would otherwise
  be scored and reported as the newest step's model.
  """
  # JAX loads after flag parsing.
  import jax  # pylint: disable=g-import-not-at-top
  from mem_diffusion.port import convert  # pylint: disable=g-import-not-at-top,g-multiple-import
  from mem_diffusion.run import parallel, records, sampling  # pylint: disable=g-import-not-at-top,g-multiple-import
  params, source = sampling.load_sampling_params(config, workdir, parallel.data_mesh())
  source["ema_sha256"] = records.checkpoint_meta(Workdir(workdir), source["step"]).get("ema_sha256")
  record, _ = records.read_record(path + ".json")
  stale = (record is None or record["fingerprint"] != records.canonical(source)
           or record.get("output") != records.file_digest(path))
  if stale and jax.process_index() == 0:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    convert.save_params(parallel.fetch(params), path + ".tmp")
    os.replace(path + ".tmp", path)
    record = {"fingerprint": records.canonical(source), "output": records.file_digest(path)}
    files.write_json(path + ".json", record)
  return {**source, "params_file_sha256": ((record or {}).get("output") or {}).get("sha256")}


def chain_config(config: ml_collections.ConfigDict, spec: str,
                 params_file: str) -> ml_collections.ConfigDict:
  chained = ml_collections.ConfigDict(config.to_dict())
  chained.sampling.respacing = spec
  chained.sampling.use_ddim = spec.startswith("ddim")
  chained.sampling.params_file = params_file
  chained.eval.every_steps = 0
  chained.name = f"{config.name}_chain_{chain_name(spec)}"
  return chained


def compare(config: ml_collections.ConfigDict, workdir: str,
            chains: Sequence[str]) -> list[dict[str, Any]]:
  """Trains if needed, then samples and evaluates under every chain; returns rows."""
  # JAX loads after flag parsing.
  from mem_diffusion.run import stages  # pylint: disable=g-import-not-at-top,g-multiple-import
  from mem_diffusion.config import validate_config  # pylint: disable=g-import-not-at-top
  validate_config(config)  # the model's own keys named as such, not as a chain's
  for spec in chains:  # every chain must fit diffusion.steps before anything runs
    try:
      validate_config(chain_config(config, spec, "unused"))
    except errors.ConfigError as e:
      raise errors.ConfigError(f"--chains: chain {chain_name(spec)!r} ({e})") from None
  stages.run(config, workdir, ("train",))
  wd = Workdir(workdir)
  out = os.path.join(wd.root, "chains")
  params_file = os.path.join(out, "params.msgpack")
  source = export_params(config, wd.root, params_file)
  rows = []
  for spec in chains:
    chained = chain_config(config, spec, params_file)
    print(f"chain {chain_name(spec)}: {chained.sampling.num_samples} samples", flush=True)
    report = stages.run(chained, os.path.join(out, chain_name(spec)), ("sample", "eval"))
    d1 = ((report.get("quality") or {}).get("d1") or {})
    rows.append({"chain": chain_name(spec), "num_samples": report["num_samples"],
                 "replicate_ratio": report["replicate_ratio"],
                 "replicate_ci95": report["replicate_ci95"],
                 "blend_ratio": report.get("blend_ratio"),
                 "median_d1_ratio": d1.get("median_ratio"),
                 "kid": ((report.get("quality") or {}).get("features") or {}).get("kid")})
  files.write_json(os.path.join(out, "summary.json"),
                        {"config": config.name, "params": source, "rows": rows})
  with open(os.path.join(out, "summary.md"), "w") as f:
    f.write(markdown(rows))
  return rows


def markdown(rows: Sequence[dict[str, Any]]) -> str:
  def fmt(v, digits=3):
    return "-" if v is None else f"{v:.{digits}f}"
  lines = ["| chain | samples | replicate ratio (95% CI) | blend ratio | median d1 / held-out | KID |",
           "|---|---|---|---|---|---|"]
  for r in rows:
    lo, hi = r["replicate_ci95"]
    lines.append(f"| {r['chain']} | {r['num_samples']} | {fmt(r['replicate_ratio'])} "
                 f"({fmt(lo)}-{fmt(hi)}) | {fmt(r['blend_ratio'])} | "
                 f"{fmt(r['median_d1_ratio'], 2)} | {fmt(r['kid'])} |")
  return "\n".join(lines) + "\n"


def main(argv):
  if len(argv) > 1:
    cli.fail(f"unexpected arguments: {' '.join(argv[1:])}")
  config = cli.loaded_config()
  cli.prepare_process(FLAGS.xla_cpu_tuning, FLAGS.huge_pages)
  workdir = FLAGS.workdir or cli.default_workdir(config_flags.get_config_filename(FLAGS["config"]))

  def run():
    chains = parse_chains(FLAGS.chains)
    runtime.setup(verbose=FLAGS.verbose, compile_cache=FLAGS.compile_cache)
    return compare(config, workdir, chains)

  rows = cli.call(run)
  print(markdown(rows), end="")
  print(f"table: {os.path.join(workdir, 'chains', 'summary.md')}")


if __name__ == "__main__":
  config_flags.DEFINE_config_file("config", None, "Experiment config file of the trained model.")
  flags.DEFINE_string("workdir", None, "The model's workdir (default: runs/<config name>).")
  flags.DEFINE_string("chains", "full,250,100,50,ddim50",
                      "Respacings to compare: 'full', 'N' (respaced), 'ddimN'.")
  flags.DEFINE_string("compile_cache", "", "Persistent compilation cache ('none' = off).")
  flags.DEFINE_bool("verbose", False, "Show the INFO logs of JAX, orbax, absl and TensorFlow.")
  cpu_tuning.define_flags(flags)
  app.run(main, flags_parser=cli.parse_flags)
