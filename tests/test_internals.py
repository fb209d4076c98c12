"""Every internal of another library that Yuyan relies on (yuyan.internals) still does what Yuyan needs, on the
installed releases. A failure names the internal, where Yuyan uses it and what changed."""

import pytest

from yuyan.internals import INTERNALS, failures


@pytest.mark.parametrize("internal", INTERNALS, ids=[internal.name.split(" ")[0] for internal in INTERNALS])
def test_internal_still_does_what_yuyan_needs(internal):
    message = internal.failure()
    if message is not None:
        pytest.fail(message, pytrace=False)


def test_a_broken_internal_is_reported_with_its_name(monkeypatch):
    import transformers.cache_utils as cache_utils

    monkeypatch.delitem(cache_utils.DYNAMIC_LAYER_TYPE_MAPPING, "lstm")
    messages = failures()
    assert any(m.startswith("transformers.cache_utils.DYNAMIC_LAYER_TYPE_MAPPING") and "config.layer_types" in m
               for m in messages), messages
