"""`provider_extensions["vllm"]` → SamplingParams keyword arguments."""

from __future__ import annotations

from typing import Any

import pytest
from google.protobuf import struct_pb2
from llmmesh.v1 import events_pb2

from worker.engine_protocol import RequestRejected
from worker.vllm_extensions import sampling_settings


def _struct(value: dict[str, Any]) -> struct_pb2.Struct:
    result = struct_pb2.Struct()
    result.update(value)
    return result


def test_allowed_values_are_converted() -> None:
    settings = sampling_settings(
        _struct(
            {
                "min_p": 0.05,
                "repetition_penalty": 1.1,
                "min_tokens": 4,
                "stop_token_ids": [2, 0],
                "bad_words": ["darn"],
                "logit_bias": {"42": -100, "7": 2.5},
                "include_stop_str_in_output": True,
            }
        )
    )
    assert settings == {
        "min_p": 0.05,
        "repetition_penalty": 1.1,
        "min_tokens": 4,
        "stop_token_ids": [2, 0],
        "bad_words": ["darn"],
        "logit_bias": {42: -100.0, 7: 2.5},
        "include_stop_str_in_output": True,
    }
    assert isinstance(settings["min_tokens"], int)


@pytest.mark.parametrize(
    ("extension", "key"),
    [
        ({"output_kind": 2}, "output_kind"),
        ({"temperature": 0.5}, "temperature"),
        ({"min_tokens": 2.5}, "min_tokens"),
        ({"min_tokens": True}, "min_tokens"),
        ({"stop_token_ids": "2"}, "stop_token_ids"),
        ({"bad_words": [1]}, "bad_words"),
        ({"logit_bias": {"token": 1}}, "logit_bias"),
        ({"skip_special_tokens": "yes"}, "skip_special_tokens"),
    ],
)
def test_unknown_keys_and_ill_typed_values_are_rejected(
    extension: dict[str, object], key: str
) -> None:
    with pytest.raises(RequestRejected) as rejected:
        sampling_settings(_struct(extension))
    assert rejected.value.code == events_pb2.ERROR_CODE_INVALID_REQUEST
    assert rejected.value.field == f"generation_parameters.provider_extensions.vllm.{key}"
