"""The input gate's shared field checks skip a body that has none of their fields, and only then."""

from __future__ import annotations

import pytest

from gateway.errors import GatewayError
from gateway.stages.input_check import _COMMON_FIELDS, _check_common

BAD = {  # a wrong value for each field the shared checks read
    "stream": "yes", "stream_options": [], "max_tokens": 0, "max_completion_tokens": "9", "n": 999,
    "best_of": 1.5, "seed": "s", "temperature": 3, "top_p": -1, "presence_penalty": "x",
    "frequency_penalty": [], "stop": [1], "user": 7,
}


def test_every_field_read_is_in_the_fast_path_set():
    assert set(BAD) == _COMMON_FIELDS


@pytest.mark.parametrize("field", sorted(BAD))
def test_a_wrong_value_is_refused_beside_other_fields(field):
    with pytest.raises(GatewayError) as err:
        _check_common({"model": "m", "messages": [], field: BAD[field]})
    assert err.value.status == 400 and err.value.param.startswith(field)


def test_a_body_without_those_fields_passes():
    _check_common({"model": "m", "messages": [{"role": "user", "content": "hi"}], "tools": []})
    _check_common({"model": "m", "temperature": None, "stop": ["x"], "n": 2})
