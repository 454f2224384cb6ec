"""Records (``keyguard._record``): frozen dataclasses that pydantic validates, writes and describes on demand."""

from __future__ import annotations

import dataclasses
import json

import pytest
from pydantic import ValidationError

import keyguard
from keyguard._record import Record
from keyguard.fixes import AddPrefix, Applicability, Plan, Remap, Rename, ShiftIndex, StripPrefix
from keyguard.report import Finding, Report, Severity, Summary
from keyguard.sources import TensorInfo


def small_report() -> Report:
    info = TensorInfo((2, 2), "F32")
    expected = {f"layers.{i}.w": info for i in range(3)}
    return keyguard.diagnose({f"module.{k}": v for k, v in expected.items()}, expected)


def test_a_record_is_a_frozen_dataclass_with_pydantic_methods() -> None:
    report = small_report()
    assert dataclasses.is_dataclass(report) and isinstance(report, Record)
    with pytest.raises(dataclasses.FrozenInstanceError):
        report.ok = True  # type: ignore[misc]
    changed = report.model_copy(update={"fail_on": "never"})
    assert changed.fail_on == "never" and report.fail_on == "error" and changed.findings == report.findings
    assert Report.model_validate_json(report.model_dump_json()) == report
    assert Report.model_validate(report.model_dump(mode="json")) == report


def test_the_verdict_is_written_and_described_as_a_computed_field() -> None:
    report = small_report()
    written = json.loads(report.model_dump_json())
    assert written["verdict"] == dataclasses.asdict(report.verdict)
    properties = Report.model_json_schema(mode="serialization")["properties"]
    assert properties["verdict"]["readOnly"] is True
    assert properties["verdict"]["description"].startswith("The closing verdict at ``fail_on``")
    assert "verdict" not in Report.model_json_schema(mode="validation")["properties"]  # read back, it is recomputed
    assert Report.model_validate(written) == report


def test_descriptions_come_from_field_metadata_also_when_inherited() -> None:
    schema = Plan.model_json_schema()
    strip = schema["$defs"]["StripPrefix"]["properties"]
    assert strip["reason"]["description"] == "Code of the finding this rule fixes, e.g. KG101"  # declared on _Rule
    report = Report.model_json_schema()
    assert report["$defs"]["Summary"]["properties"]["fixable"]["description"].startswith("further expected keys")
    assert schema["properties"]["rules"]["default"] == []  # stated, as when plans were pydantic models


def test_rules_are_told_apart_by_op_with_one_clear_error() -> None:
    with pytest.raises(ValidationError) as info:
        Plan.model_validate({"rules": [{"op": "strip_suffix", "prefix": "a."}]})
    errors = info.value.errors(include_url=False)
    assert len(errors) == 1 and errors[0]["type"] == "union_tag_invalid", errors
    schema = Plan.model_json_schema()
    assert schema["properties"]["rules"]["items"]["discriminator"]["propertyName"] == "op"


def test_unknown_fields_are_refused_in_plans_and_rules() -> None:
    with pytest.raises(ValidationError, match=r"unexpected_keyword_argument|Unexpected keyword"):
        Plan.model_validate({"rules": [{"op": "strip_prefix", "prefix": "a.", "prefx": "b."}]})
    with pytest.raises(ValidationError):
        Plan.model_validate({"rules": [], "version": 2})


def test_a_records_checks_run_when_built_validated_or_copied() -> None:
    with pytest.raises(ValueError, match="invalid regular expression"):
        Rename(pattern="(", replacement="x")
    with pytest.raises(ValidationError, match="invalid regular expression"):
        Plan.model_validate({"rules": [{"op": "rename", "pattern": "(", "replacement": "x"}]})
    rule = Rename(pattern=r"a\.(.*)", replacement=r"b.\1")
    with pytest.raises(ValueError, match="does not fit pattern"):
        rule.model_copy(update={"replacement": r"b.\2"})
    with pytest.raises(ValueError, match="placeholders"):
        Remap(old="x.{1}.w", new="y.{0}.w")


def test_derived_state_is_neither_a_field_nor_written() -> None:
    rule = AddPrefix(prefix="model.", only=["layers"])
    assert rule.rename("layers.0.w") == "model.layers.0.w" and rule.rename("head.w") is None  # fills the cache
    assert "_scope" not in rule.model_dump() and "_scope" not in rule.model_dump_json()
    assert rule == AddPrefix(prefix="model.", only=["layers"])
    assert Plan.model_validate_json(Plan(rules=[rule, StripPrefix(prefix="m.")]).model_dump_json()).rules[0] == rule


def test_pydantic_options_pass_through() -> None:
    report = small_report()
    deep = report.model_copy(deep=True)
    assert deep == report and deep.findings is not report.findings and deep.findings[0] is not report.findings[0]
    shallow = report.model_copy()
    assert shallow.findings is report.findings
    strict = Plan.model_validate({"rules": [{"op": "shift_index", "prefix": "a.", "offset": 3}]}, strict=True)
    assert strict == Plan(rules=[ShiftIndex(prefix="a.", offset=3)])  # a dict is validated strictly, not refused
    with pytest.raises(ValidationError, match="int"):  # strict: "3" is no int
        Plan.model_validate({"rules": [{"op": "shift_index", "prefix": "a.", "offset": "3"}]}, strict=True)
    assert Summary.model_validate(report.summary.model_dump(), strict=True) == report.summary
    (lax,) = Plan.model_validate({"rules": [{"op": "shift_index", "prefix": "a.", "offset": "3"}]}).rules
    assert isinstance(lax, ShiftIndex) and lax.offset == 3
    schema = Report.model_json_schema(ref_template="#/components/schemas/{model}")
    assert "#/components/schemas/SourceRef" in json.dumps(schema)


def test_enum_fields_given_as_text_become_members_or_fail_at_once() -> None:
    rule = StripPrefix(prefix="module.", applicability="unsafe")  # type: ignore[arg-type]
    assert rule.applicability is Applicability.unsafe
    assert Plan(rules=[rule]).at_least("unsafe").rules == [rule]
    with pytest.raises(ValueError, match="bogus"):
        StripPrefix(prefix="module.", applicability="bogus")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="bogus"):
        Rename(pattern="a", replacement="b", applicability="bogus")  # type: ignore[arg-type]
    finding = small_report().findings[0]
    assert finding.model_copy(update={"severity": "warning"}).severity is Severity.warning
    with pytest.raises(ValueError):
        Finding(code="KG101", kind="extra_prefix", severity="loud", message="m", count=1)  # type: ignore[arg-type]


def test_a_plan_takes_rules_not_dicts() -> None:
    with pytest.raises(TypeError, match="model_validate"):
        Plan(rules=[{"op": "strip_prefix", "prefix": "a."}])  # type: ignore[list-item]
    plan = Plan(rules=(StripPrefix(prefix="a."),))  # type: ignore[arg-type]
    assert plan == Plan(rules=[StripPrefix(prefix="a.")]) and type(plan.rules) is list
