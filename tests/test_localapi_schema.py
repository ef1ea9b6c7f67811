"""schemathesis against the OpenAPI document the local API serves, over a real server on loopback.

Generated requests (valid and invalid) must never get a server error, and every answer must match
the status codes, content types and response schemas the document declares. The server runs with a
token configured, so the document declares bearer auth and schemathesis also checks that a call
without the token is refused. Examples per operation are kept modest so this runs in about 30 s.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, assume, given, settings
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance

from tests.test_localapi import (
    API_TOKEN,
    FULL_TOKEN,
    Agent,
    client,
    make_settings,
    verification_body,
)

MAX_EXAMPLES = 50


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Agent]:
    tmp: Path = tmp_path_factory.mktemp("schema")
    with Agent(make_settings(tmp, token=API_TOKEN, full_data_token=FULL_TOKEN)) as a:
        with client(a, API_TOKEN) as c:  # something to find, so GETs also reach the 200 paths
            for i in range(2):
                assert c.post("/v1/verifications", json=verification_body(seed=i)).status_code == 202
        yield a


@pytest.fixture(scope="module")
def api_schema(running: Agent) -> Any:
    return schemathesis.openapi.from_url(running.url + "/openapi.json")


def excluded(op: Any) -> list[Any]:
    """Checks that cannot hold for an operation, each with its reason."""
    if (op.method.upper(), op.path) == ("POST", "/v1/verifications"):
        # A schema-valid body is not a valid record: JSON Schema cannot express the GB 11643 check
        # digit, a decodable JPEG, real calendar dates or the cross-field rules, so generated
        # "valid" bodies are rightly refused with 422 (test_localapi.py posts real valid ones).
        return [positive_data_acceptance]
    return []


def operations(api_schema: Any) -> list[Any]:
    return [result.ok() for result in api_schema.get_all_operations()]


# schemathesis's own pytest integration (schema.parametrize) does not work with pytest 9 yet, so the
# operations are driven through its Python API: one hypothesis run per operation and mode.
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=["positive", "negative"])
def test_api_conforms_to_its_schema(api_schema: Any, running: Agent, mode: GenerationMode) -> None:
    failures: list[str] = []
    ops = operations(api_schema)
    assert len(ops) >= 6
    for op in ops:

        @given(case=op.as_strategy(generation_mode=mode))
        @settings(
            max_examples=MAX_EXAMPLES,
            deadline=None,
            database=None,
            derandomize=True,
            suppress_health_check=list(HealthCheck),
        )
        def run(case: Any) -> None:
            # a query parameter whose value is None is silently dropped by the HTTP client, so a
            # "negative" case built on one would be sent as a valid request
            assume(not any(v is None for v in (case.query or {}).values()))
            headers = case.headers or {}
            # the real token replaces the generated one; a case that leaves Authorization out is
            # sent without it (and must get 401)
            auth = {"Authorization": f"Bearer {API_TOKEN}"} if "Authorization" in headers else None
            case.call_and_validate(headers=auth, excluded_checks=excluded(case.operation))

        try:
            run()
        except Exception as exc:  # collect every operation's failure, then report them together
            failures.append(f"{op.method.upper()} {op.path}: {exc}")
    assert not failures, "\n\n".join(failures)


def test_schema_lists_every_endpoint_of_the_issue(api_schema: Any, running: Agent) -> None:
    import httpx

    doc = httpx.get(running.url + "/openapi.json").json()
    ops = {(m.upper(), p) for p, item in doc["paths"].items() for m in item}
    assert {
        ("POST", "/v1/verifications"),
        ("GET", "/v1/verifications/{record_id}"),
        ("GET", "/v1/verifications"),
        ("GET", "/v1/status"),
        ("PUT", "/v1/operator"),
    } <= ops
    assert doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    post = doc["paths"]["/v1/verifications"]["post"]
    assert {"202", "401", "422"} <= set(post["responses"])
    assert any(p["name"] == "Idempotency-Key" for p in post["parameters"])


def test_the_relay_schema_is_generated_from_the_record_model(running: Agent) -> None:
    import httpx

    from agent.localapi.app import RELAY_DEFAULTED_FIELDS, verification_body_schema
    from core.records import VerificationRecord

    doc = httpx.get(running.url + "/openapi.json").json()
    served = doc["paths"]["/v1/verifications"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert served == verification_body_schema()
    model = VerificationRecord.model_json_schema()
    for name, rule in model["properties"].items():  # every field rule as the model states it (no null default)
        assert served["properties"][name] == {k: v for k, v in rule.items() if k != "default"}, name
    assert set(model["required"]) - set(served["required"]) == set(RELAY_DEFAULTED_FIELDS)
    assert served["additionalProperties"] is False
    assert (
        served["properties"]["operationUser"]["maxLength"] == 10 and "pattern" in served["properties"]["operationUser"]
    )
    assert served["properties"]["sexCode"]["enum"] == ["0", "1", "2", "9"]


def test_a_field_rule_changed_in_the_model_appears_in_the_schema() -> None:
    from typing import Annotated

    from pydantic import create_model

    from agent.localapi.app import verification_body_schema
    from core.records import VerificationRecord, _rule, _varchar, _varchar_schema

    longer = Annotated[str, _rule(_varchar(12), _varchar_schema(12))]
    changed = create_model("Changed", __base__=VerificationRecord, realName=(longer, ...))
    assert verification_body_schema()["properties"]["realName"]["maxLength"] == 10
    assert verification_body_schema(changed)["properties"]["realName"]["maxLength"] == 12
