"""Quiet by default (issue 14, item 4): TensorFlow's absl/CUDA/oneDNN start-up lines are
dropped, `fer --verbose` leaves TensorFlow's defaults, predictions trace nothing.

The end-to-end check (a real `fer cv-train` whose output has no such line) is
tests/test_pipeline.py::test_training_output_has_no_tensorflow_chatter."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np

from fercli.core import tfenv

# Lines seen on a CPU machine with TensorFlow 2.21 (and the older date-prefixed format)
CHATTER = [
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n",
    "I0000 00:00:1796495114.932674   30688 port.cc:153] oneDNN custom operations are on. "
    "You may see slightly different numerical results.\n",
    "I0000 00:00:1796495114.933441   30688 cudart_stub.cc:31] Could not find cuda drivers "
    "on your machine, GPU will not be used.\n",
    "E0000 00:00:1796495168.602340    2375 cuda_platform.cc:52] failed call to cuInit: "
    "INTERNAL: CUDA error: Failed call to cuInit: UNKNOWN ERROR (303)\n",
    "2025-09-17 14:44:05.157831: I external/local_xla/xla/tsl/cuda/cudart_stub.cc:32] Could "
    "not find cuda drivers on your machine, GPU will not be used.\n",
    "E0000 00:00:1758131045.203198 3722035 cuda_dnn.cc:8579] Unable to register cuDNN "
    "factory: Attempting to register factory for plugin cuDNN when one has already been "
    "registered\n",
    "W0000 00:00:1758131045.228000 3722035 computation_placer.cc:177] computation placer "
    "already registered.\n",
]
KEPT = [
    "E0000 00:00:1796495168.602340    2375 some_kernel.cc:52] a real error\n",
    "/x/y.py:3: DeprecationWarning: something Python said while importing\n",
    "fercli's own line\n",
]


def test_start_up_chatter_is_dropped_and_everything_else_kept():
    assert all(tfenv.is_chatter(line, 2) for line in CHATTER)
    assert not any(tfenv.is_chatter(line, 2) for line in KEPT)
    assert not any(tfenv.is_chatter(line, 0) for line in CHATTER + KEPT)  # level 0: all


PROBE = textwrap.dedent("""
    import multiprocessing, os, sys
    from fercli import cli
    from fercli.core import tfenv

    def report():
        return (os.environ.get("TF_CPP_MIN_LOG_LEVEL"), os.environ.get("FERCLI_VERBOSE"),
                tfenv.quiet_import_pending())

    if __name__ == "__main__":
        sys.argv = ["fer", *sys.argv[1:], "weights", "list"]  # cheap, no TensorFlow
        try:
            cli.main()
        except SystemExit:
            pass
        # a worker as the engine starts it (spawn: a fresh interpreter importing fercli)
        with multiprocessing.get_context("spawn").Pool(1) as pool:
            worker = pool.apply(report)
        print(repr((report(), worker)))
""")


def probe(tmp_path, *options: str):
    script = tmp_path / "probe.py"
    script.write_text(PROBE)
    env = {k: v for k, v in os.environ.items()
           if k not in ("TF_CPP_MIN_LOG_LEVEL", "FERCLI_VERBOSE")}
    result = subprocess.run([sys.executable, str(script), *options], env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return eval(result.stdout.strip().splitlines()[-1])


def test_verbose_leaves_tensorflow_defaults_in_the_process_and_its_workers(tmp_path):
    quiet = ("2", None, True)
    assert probe(tmp_path) == (quiet, quiet)
    verbose = (None, "1", False)  # TF_CPP_MIN_LOG_LEVEL not forced, no quiet import
    assert probe(tmp_path, "--verbose") == (verbose, verbose)


def test_predictions_of_one_model_per_fold_trace_nothing():
    """cv-train predicts with a new model per fold in one process: with ``model.predict``
    the fifth fold made TensorFlow warn about retracing; ``predict_batches`` calls each
    model eagerly, so no predict function is traced at all (Keras keeps the one it traces
    in ``model.predict_function``). Checked on the model, not on log lines, whose
    throttling depends on what ran before in the process."""
    import keras
    import tensorflow as tf

    from fercli.learning.training import predict_batches

    x = np.random.default_rng(0).normal(size=(10, 4)).astype(np.float32)
    dataset = tf.data.Dataset.from_tensor_slices(({"features": x}, np.zeros(10))).batch(4)
    for _ in range(6):
        inputs = keras.Input((4,), name="features")
        outputs = keras.layers.Dense(3, activation="softmax")(inputs)
        model = keras.Model({"features": inputs}, outputs)
        probabilities = predict_batches(model, dataset)
        assert getattr(model, "predict_function", None) is None
        assert probabilities.shape == (10, 3)
        np.testing.assert_allclose(probabilities, model.predict(dataset, verbose=0),
                                   rtol=1e-5, atol=1e-6)
        assert model.predict_function is not None  # the check is live: predict traces
