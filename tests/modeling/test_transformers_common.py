"""transformers' own common model tests (`ModelTesterMixin`) run on Yuyan, once per stack.

The mixin lives in transformers' repository (`tests/test_modeling_common.py`), not in the wheel; the PyPI sdist
ships it. This module finds those files (see `_find_transformers_tests`), assembles them into an importable package
in a temporary directory together with stubs for the two modules the sdist lacks, and defines one
`unittest.TestCase` per stack. Nothing from transformers is copied into this repository.

Where the files cannot be found or fetched the whole module is skipped, with the reason.
"""

from __future__ import annotations

import atexit
import importlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import unittest
import warnings
from pathlib import Path
from unittest import mock

import pytest
import transformers

from yuyan import (
    YuyanConfig,
    YuyanForCausalLM,
    YuyanForQuestionAnswering,
    YuyanForSequenceClassification,
    YuyanForTokenClassification,
    YuyanModel,
)

TRANSFORMERS_VERSION = transformers.__version__
# What the mixin needs from the sdist: test_modeling_common imports neither of the other two, but they are small
# and a future version may, so the package carries all three.
SDIST_TEST_FILES = ("test_modeling_common.py", "test_configuration_common.py", "test_pipeline_mixin.py")
PACKAGE = "yuyan_hf_common_tests"
# Some 270 tests of a fraction of a second each: over two minutes together on 2 shared cores, too much for the
# fast tier.
pytestmark = pytest.mark.slow


# ----------------------------------------------------------------------------------------------------------------
# Finding transformers' test files and making them importable
# ----------------------------------------------------------------------------------------------------------------


def _cache_dir() -> Path:
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return root / "yuyan" / f"transformers-{TRANSFORMERS_VERSION}-tests"


def _has_files(directory: Path) -> bool:
    return all((directory / name).is_file() for name in SDIST_TEST_FILES)


def _download_into(target: Path) -> str | None:
    """Fetch the sdist of the installed transformers with pip and extract only the test files; None on success."""
    with tempfile.TemporaryDirectory(prefix="yuyan-tf-sdist-") as scratch:
        command = [
            sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
            f"transformers=={TRANSFORMERS_VERSION}", "-d", scratch,
        ]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=600)
        except (OSError, subprocess.TimeoutExpired) as error:
            return f"`pip download` failed: {error}"
        archives = list(Path(scratch).glob("transformers-*.tar.gz"))
        if done.returncode != 0 or not archives:
            return f"`pip download` failed (exit {done.returncode}): {done.stderr.strip()[-300:]}"
        # Extract into a sibling directory and rename it into place, so that a concurrent run never sees half.
        staging = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
        staging.chmod(0o755)
        with tarfile.open(archives[0]) as archive:
            for name in SDIST_TEST_FILES:
                member = f"transformers-{TRANSFORMERS_VERSION}/tests/{name}"
                try:
                    data = archive.extractfile(member).read()
                except (KeyError, AttributeError):
                    shutil.rmtree(staging, ignore_errors=True)
                    return f"the sdist has no {member}"
                (staging / name).write_bytes(data)
        try:
            staging.rename(target)
        except OSError:  # another run got there first
            shutil.rmtree(staging, ignore_errors=True)
    return None


def _find_transformers_tests() -> tuple[Path | None, str]:
    """The directory holding the sdist's test files, or None and why not.

    `YUYAN_TRANSFORMERS_TESTS` (an extracted sdist `tests` directory) wins; else the cache directory, filled by
    one `pip download` of the installed version's sdist when empty.
    """
    given = os.environ.get("YUYAN_TRANSFORMERS_TESTS")
    if given:
        if _has_files(Path(given)):
            return Path(given), ""
        return None, f"YUYAN_TRANSFORMERS_TESTS={given} does not hold {', '.join(SDIST_TEST_FILES)}"
    cached = _cache_dir()
    if _has_files(cached):
        return cached, ""
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        return None, f"cannot create the cache directory {cached.parent}: {error}"
    failure = _download_into(cached)
    if failure is None and _has_files(cached):
        return cached, ""
    return None, (
        f"transformers {TRANSFORMERS_VERSION}'s tests/test_modeling_common.py is not available ({failure}); "
        f"set YUYAN_TRANSFORMERS_TESTS to an extracted sdist's tests directory or fill {cached}"
    )


if __name__ == "__main__":
    # `python tests/test_transformers_common.py` only fetches the files (CI runs it before pytest, so that a failed
    # download fails the build instead of skipping these tests) and prints where they are.
    _found, _why = _find_transformers_tests()
    if _found is None:
        sys.exit(f"error: {_why}")
    print(_found)
    sys.exit(0)


# The two modules test_modeling_common imports that the sdist does not ship. The mixins they define only add
# tests (generation, torch.export) that this module does not run; empty classes keep the import working.
_STUBS = {
    "__init__.py": "",
    "generation/__init__.py": "",
    "generation/test_utils.py": "class GenerationTesterMixin:\n    pass\n",
    "exporters/__init__.py": "",
    "exporters/test_export.py": "class ExportTesterMixin:\n    pass\n",
}


def _import_common(source: Path):
    """Copy the test files and the stubs into a throw-away package and import `test_modeling_common` from it."""
    root = Path(tempfile.mkdtemp(prefix="yuyan-hf-common-"))
    atexit.register(shutil.rmtree, root, True)
    package = root / PACKAGE
    for relative, text in _STUBS.items():
        (package / relative).parent.mkdir(parents=True, exist_ok=True)
        (package / relative).write_text(text)
    for name in SDIST_TEST_FILES:
        shutil.copyfile(source / name, package / name)
    sys.path.insert(0, str(root))
    with warnings.catch_warnings():
        # Their marks (flash_attn_test, torch_compile_test, ...) are registered by transformers' own conftest.
        warnings.simplefilter("ignore", pytest.PytestUnknownMarkWarning)
        return importlib.import_module(f"{PACKAGE}.test_modeling_common")


try:
    import parameterized  # test_modeling_common needs it; it is in the `dev` extra
except ImportError:
    pytest.skip("transformers' common tests need `parameterized` (pip install -e '.[dev]')", allow_module_level=True)

_source, _why = _find_transformers_tests()
if _source is None:
    pytest.skip(_why, allow_module_level=True)
common = _import_common(_source)

import torch  # noqa: E402
from transformers.models.auto import modeling_auto  # noqa: E402

ModelTesterMixin = common.ModelTesterMixin


# ----------------------------------------------------------------------------------------------------------------
# Our model tester
# ----------------------------------------------------------------------------------------------------------------


class YuyanModelTester:
    """Tiny configurations and inputs for the mixin, one instance per stack."""

    def __init__(self, parent: unittest.TestCase, layer_types: list[str]):
        self.parent = parent
        self.layer_types = list(layer_types)
        self.batch_size = 3
        self.seq_length = 7
        self.is_training = True
        self.use_input_mask = True
        self.vocab_size = 99
        self.hidden_size = 32
        self.num_hidden_layers = len(self.layer_types)
        self.num_attention_heads = 4
        self.num_key_value_heads = 2
        self.intermediate_size = 37
        self.max_position_embeddings = 64
        self.num_labels = 3
        self.pad_token_id = 0
        self.bos_token_id = 1
        self.eos_token_id = 2

    def get_config(self) -> YuyanConfig:
        return YuyanConfig(
            vocab_size=self.vocab_size,
            hidden_size=self.hidden_size,
            # From `layer_types`, not `self.num_hidden_layers`: the hybrid test narrows the latter to the attention
            # layers while the mixin counts attention outputs.
            num_hidden_layers=len(self.layer_types),
            layer_types=self.layer_types,
            num_attention_heads=self.num_attention_heads,
            num_key_value_heads=self.num_key_value_heads,
            intermediate_size=self.intermediate_size,
            max_position_embeddings=self.max_position_embeddings,
            num_labels=self.num_labels,
            pad_token_id=self.pad_token_id,
            bos_token_id=self.bos_token_id,
            eos_token_id=self.eos_token_id,
        )

    def prepare_config_and_inputs(self):
        input_ids = common.ids_tensor([self.batch_size, self.seq_length], self.vocab_size)
        attention_mask = common.random_attention_mask([self.batch_size, self.seq_length]) if self.use_input_mask else None
        return self.get_config(), input_ids, attention_mask

    def prepare_config_and_inputs_for_common(self):
        config, input_ids, attention_mask = self.prepare_config_and_inputs()
        inputs = {"input_ids": input_ids}
        if attention_mask is not None:
            inputs["attention_mask"] = attention_mask
        return config, inputs


ALL_MODEL_CLASSES = (
    YuyanModel,
    YuyanForCausalLM,
    YuyanForSequenceClassification,
    YuyanForTokenClassification,
    YuyanForQuestionAnswering,
)

# The mixin decides which labels a head gets (and which heads train, load mismatched shapes, ...) by looking the
# class name up in transformers' built-in `*_MAPPING_NAMES`; a model registered from outside is not there. During
# each test the names are added under our model type. Auto classes still resolve through `CONFIG_MAPPING_NAMES`,
# which does not list "yuyan", so they keep using the registration `import yuyan` made.
_TASK_NAMES = {
    "MODEL_MAPPING_NAMES": YuyanModel,
    "MODEL_FOR_CAUSAL_LM_MAPPING_NAMES": YuyanForCausalLM,
    "MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES": YuyanForSequenceClassification,
    "MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES": YuyanForTokenClassification,
    "MODEL_FOR_QUESTION_ANSWERING_MAPPING_NAMES": YuyanForQuestionAnswering,
}


class _YuyanCommonTests(ModelTesterMixin):
    """The mixin plus what every stack shares; a concrete `unittest.TestCase` per stack follows."""

    layer_types: list[str] = []
    all_model_classes = ALL_MODEL_CLASSES
    pipeline_model_mapping = {}
    # The mixin runs this init check only for models whose configuration file carries a copyright year >= 2023 (a
    # proxy for "recent"); ours carries none. Yuyan is new and has its own LSTM init, so run it.
    test_can_init_all_missing_weights_before_2023 = True

    def setUp(self):
        self.model_tester = YuyanModelTester(self, self.layer_types)
        for mapping_name, model_class in _TASK_NAMES.items():
            patcher = mock.patch.dict(getattr(modeling_auto, mapping_name), {YuyanConfig.model_type: model_class.__name__})
            patcher.start()
            self.addCleanup(patcher.stop)

    def _check_caches_are_equal(self, cache, other):
        # test_bc_cache_name_forward compares two caches with this method when the test class has it (transformers'
        # GenerationTesterMixin, not in the sdist, defines one); its fallback, `get_seq_length`, is undefined for
        # a cache of LSTM states only. Compare layer by layer: keys and values, or the recurrent states.
        self.assertEqual(len(cache.layers), len(other.layers))
        for layer, other_layer in zip(cache.layers, other.layers):
            self.assertIs(type(layer), type(other_layer))
            if hasattr(layer, "recurrent_states"):
                self.assertEqual(layer.recurrent_states.keys(), other_layer.recurrent_states.keys())
                for index, state in layer.recurrent_states.items():
                    self.assertIsNotNone(state)
                    torch.testing.assert_close(state, other_layer.recurrent_states[index])
            else:
                self.assertGreater(layer.keys.shape[-2], 0)
                torch.testing.assert_close(layer.keys, other_layer.keys)
                torch.testing.assert_close(layer.values, other_layer.values)

    def test_generation_tester_mixin_inheritance(self):
        self.skipTest(
            "GenerationTesterMixin lives in transformers' tests/generation/test_utils.py, which the sdist does not "
            "ship (it is stubbed empty here); generation is tested in tests/test_generation.py"
        )


class YuyanAttentionCommonTest(_YuyanCommonTests, unittest.TestCase):
    layer_types = ["full_attention"] * 2


class YuyanLSTMCommonTest(_YuyanCommonTests, unittest.TestCase):
    layer_types = ["lstm"] * 2
    # No attention layer, so no attention weights to return (as for transformers' Mamba).
    has_attentions = False

    @parameterized.parameterized.expand([("linear",), ("dynamic",), ("yarn",)])
    def test_model_rope_scaling_from_config(self, scaling_type):
        self.skipTest(
            "an all-LSTM stack has no attention layers, hence no rotary embedding: rope_parameters cannot change its "
            "outputs (the hybrid stack runs this test)"
        )


class YuyanHybridCommonTest(_YuyanCommonTests, unittest.TestCase):
    layer_types = ["lstm", "full_attention"]

    def test_attention_outputs(self):
        # `outputs.attentions` has one entry per attention layer (an LSTM layer has no attention weights), while the
        # mixin expects `num_hidden_layers` entries; run it with the tester's count narrowed to the attention layers.
        attention_layers = self.layer_types.count("full_attention")
        with mock.patch.object(self.model_tester, "num_hidden_layers", attention_layers):
            super().test_attention_outputs()
