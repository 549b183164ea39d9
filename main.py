"""Entry point: python main.py --config=configs/hybrid_2k.py

Runs train -> sample -> eval in runs/<config name> (or --workdir), skipping
what is complete and redoing what the config no longer matches. --mode picks
one stage. Exit codes: 0 done; 2 bad command, config or input; 1 the run
failed (corrupt checkpoint, divergence, full disk); 128+signal preempted
(state saved: rerun to resume). Multi-host: --multihost (TPU pods, SLURM) or
--coordinator_address/--num_processes/--process_id, all processes on one
shared workdir; a process that stops answering ends the run within
--peer_timeout seconds (mem_diffusion/run/multihost.py).

On a CPU run, main() first applies the CPU tuning and says so
(`--xla_cpu_tuning`, `--huge_pages`: mem_diffusion/run/cpu_tuning.py; the
huge pages may restart the process once). config.json and
train_summary.json record the XLA_FLAGS, versions and device the run used,
and training resumed under other ones is refused unless
`--accept_environment_change` (mem_diffusion/run/environment.py).
"""

import mem_diffusion.python_version  # pylint: disable=unused-import  # first: one error line on an old Python

from absl import app
from absl import flags
from ml_collections import config_flags

from mem_diffusion.run import cli
from mem_diffusion.run import cpu_tuning
from mem_diffusion.run import runtime

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Experiment config file, e.g. "
                                "configs/gm_2k.py or configs/gm_2k.py:tiny.")
flags.DEFINE_string("workdir", None, "Checkpoints, samples, reports (default: runs/<config name>).")
flags.DEFINE_enum("mode", "all", ["train", "sample", "eval", "all"], "Stage(s) to run.")
flags.DEFINE_bool("verbose", False, "Show the INFO logs of JAX, orbax, absl and TensorFlow.")
flags.DEFINE_string("compile_cache", "", "Persistent compilation cache directory "
                    "('' = $JAX_COMPILATION_CACHE_DIR or ~/.cache/mem_diffusion/jax; 'none' = off).")
flags.DEFINE_bool("multihost", False, "jax.distributed.initialize() with cluster auto-detection.")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-process runs).")
flags.DEFINE_integer("num_processes", None, "Number of processes (multi-process runs).")
flags.DEFINE_integer("process_id", None, "This process's index (multi-process runs).")
flags.DEFINE_integer("peer_timeout", 120, "Multi-process runs: the longest wait, in seconds, "
                     "for a process that does not answer (at start-up and during the run) "
                     "before the run ends with one error line.", lower_bound=1)
flags.DEFINE_bool("allow_unfinished", False, "Sample/evaluate the newest checkpoint of an "
                  "unfinished training run; its outputs then say 'step S of N'.")
flags.DEFINE_bool("accept_environment_change", False, "Resume training although XLA_FLAGS, "
                  "jax/jaxlib or the device kind differ from those recorded in config.json.")
cpu_tuning.define_flags(flags)


def main(argv):
  if len(argv) > 1:
    cli.fail(f"unexpected arguments: {' '.join(argv[1:])}")
  config = cli.loaded_config()
  cli.prepare_process(FLAGS.xla_cpu_tuning, FLAGS.huge_pages)  # before JAX starts
  workdir = FLAGS.workdir or cli.default_workdir(config_flags.get_config_filename(FLAGS["config"]))
  # JAX (and with it the distributed runtime) starts only after the flags
  # parsed; TensorFlow only once the cheap checks passed (stages.run).
  from mem_diffusion.run import multihost, stages  # pylint: disable=g-import-not-at-top,g-multiple-import

  def run():
    runtime.setup(verbose=FLAGS.verbose, compile_cache=FLAGS.compile_cache)
    multihost.start(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id,
                    auto=FLAGS.multihost, peer_timeout=FLAGS.peer_timeout,
                    guard=not FLAGS.verbose)
    stages_to_run = stages.STAGES if FLAGS.mode == "all" else (FLAGS.mode,)
    print(f"{config.name}: {', '.join(stages_to_run)} in {workdir}", flush=True)
    stages.run(config, workdir, stages_to_run, summary=stages.print_summary,
               allow_unfinished=FLAGS.allow_unfinished,
               accept_environment=FLAGS.accept_environment_change or None)

  cli.call(multihost.ending(run))


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
