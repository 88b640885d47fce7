"""The bookkeeping of the Render SDK check (check.py): every SDK call goes
through `Harness.call`, which records, per operation, whether the answer
carried the status Render documents and parsed into the SDK's model; the
scenario's own checks (`Harness.check`) add what the answer must say. At the
end `Harness.report` prints one PASS or FAIL line per operation of the
modules in scope, so an operation the scenario never reached is a FAIL too.

Nothing here knows berth: it is Render's contract, as the SDK encodes it.
"""

import importlib
import json
import pkgutil
import re
import sys
import time
import traceback

import httpx
from render.public_api import errors
from render.public_api.client import AuthenticatedClient
from render.public_api.types import Unset

# Event types whose details class is not the type's name in CamelCase.
DETAILS_CLASS_NAMES = {
    "maintenance_mode_uri_updated": "MaintenanceModeURIUpdated",
    "plan_changed": "InstanceTypeChanged",
}


def show(value):
    """A value for a failure line: `missing` for a field the answer lacked."""
    if isinstance(value, Unset):
        return "missing"
    if hasattr(value, "value"):  # an SDK enum
        return repr(value.value)
    return repr(value)


def details_class(event_type):
    """The SDK model for the details of an event of `event_type` (a string),
    or None when the SDK has none."""
    import render.public_api.models as models

    name = DETAILS_CLASS_NAMES.get(event_type) or "".join(
        part.capitalize() for part in event_type.split("_")
    )
    return getattr(models, name, None)


def operations(module):
    """The operations (one Python module each) of an SDK API module."""
    package = importlib.import_module(f"render.public_api.api.{module}")
    return sorted(name for _, name, _ in pkgutil.iter_modules(package.__path__))


def describe(exc):
    """Why the SDK refused an answer: the field or value, and the model
    (with the model's line that failed, for errors that do not name the
    field, such as `null` where Render sends a time)."""
    model, line = "?", ""
    for frame in reversed(traceback.extract_tb(exc.__traceback__)):
        if "/public_api/models/" in frame.filename:
            model = frame.filename.rsplit("/", 1)[-1].removesuffix(".py")
            line = (frame.line or "").strip()
            break
    if isinstance(exc, KeyError):
        return f"required field {exc.args[0]!r} missing (model {model})"
    if isinstance(exc, ValueError) and " is not a valid " in str(exc):
        return f"{exc} (model {model})"
    return f"{type(exc).__name__}: {exc} at `{line}` (model {model})"


class Harness:
    def __init__(self, base_url, token, secrets, transport=None):
        """`transport` replaces the network (the self-test's fake API)."""
        self.secrets = [s for s in secrets if s]
        self.last = None  # the last HTTP answer the SDK received
        extra = {"transport": transport} if transport else {}
        self.client = AuthenticatedClient(
            base_url=base_url,
            token=token,
            raise_on_unexpected_status=True,
            timeout=httpx.Timeout(30.0),
            httpx_args={"event_hooks": {"response": [self._received]}, **extra},
        )
        # For the scenario's fallbacks only (ids it needs to go on after
        # an SDK call failed); never used to judge an answer.
        self.raw = httpx.Client(
            base_url=base_url,
            headers={"Authorization": f"Bearer {token}"},
            timeout=30.0,
            **extra,
        )
        # "module.op" -> {reason: [labels]}; an op is present once called.
        self.results = {}
        self.current = None
        self.started = time.monotonic()

    def _received(self, response):
        self.last = response

    def log(self, message):
        """Progress on stderr (the verdicts go to stdout)."""
        elapsed = time.monotonic() - self.started
        print(f"[{elapsed:6.1f}s] {self.redact(message)}", file=sys.stderr, flush=True)

    def redact(self, text):
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return text

    # Recording.

    def ran(self, op):
        self.current = op
        self.results.setdefault(op, {})

    def fail(self, op, reason, label=None):
        self.ran(op)
        reason = " ".join(reason.split())  # one line per operation
        labels = self.results[op].setdefault(reason, [])
        if label and label not in labels:
            labels.append(label)
        return None

    def check(self, op, holds, reason, label=None):
        """Records `reason` against `op` unless `holds`; returns `holds`."""
        self.ran(op)
        if not holds:
            self.fail(op, reason, label)
        return bool(holds)

    def last_json(self):
        """The last answer's JSON body, or None."""
        try:
            return self.last.json() if self.last is not None else None
        except ValueError:
            return None

    @staticmethod
    def _error_hint(status, content):
        """A short account of an answer's body for a failure line: the
        error message if it has one, else the start of a non-2xx body."""
        text = content.decode(errors="replace").strip().replace("\n", " ")
        try:
            data = json.loads(text)
        except ValueError:
            data = None
        if isinstance(data, dict) and isinstance(data.get("message"), str):
            text = data["message"]
        elif 200 <= status < 300:
            return ""
        # serde's position suffix differs per body: equal reasons must read equal.
        text = re.sub(r" at line \d+ column \d+$", "", text)
        return f": {text[:120]!r}" if text else ""

    # Calls.

    def call(self, op, function, *args, expect, model=None, many=False, label=None, **kwargs):
        """`function.sync_detailed(*args, **kwargs)`, judged: the status
        must be `expect`, and the parsed answer a `model` (a list of them
        when `many`). Returns the parsed answer (True for answers without a
        body) or None, with the reason recorded against `op`."""
        self.ran(op)
        self.last = None
        try:
            response = function.sync_detailed(*args, client=self.client, **kwargs)
        except errors.UnexpectedStatus as e:
            return self.fail(
                op,
                f"status {e.status_code}, which Render does not document here "
                f"({expect} expected){self._error_hint(e.status_code, e.content)}",
                label,
            )
        except httpx.HTTPError as e:
            return self.fail(op, f"request failed: {type(e).__name__}: {e}", label)
        except (KeyError, ValueError, TypeError, AttributeError) as e:
            if self.last is None:  # no request went out: the harness's mistake
                return self.fail(op, f"call not made: {type(e).__name__}: {e}", label)
            # The SDK's models refused the answer.
            status = self.last.status_code
            return self.fail(op, f"status {status}, answer does not parse: {describe(e)}", label)
        status = int(response.status_code)
        if status != expect:
            detail = self._error_hint(status, response.content)
            return self.fail(op, f"status {status} ({expect} expected){detail}", label)
        if model is None:
            return True
        parsed = response.parsed
        if many:
            if not isinstance(parsed, list):
                return self.fail(op, f"answer is {type(parsed).__name__}, not a list", label)
            strays = [type(p).__name__ for p in parsed if not isinstance(p, model)]
            if strays:
                return self.fail(
                    op, f"list items parse as {strays[0]}, not {model.__name__}", label
                )
        elif not isinstance(parsed, model):
            return self.fail(
                op, f"answer parses as {type(parsed).__name__}, not {model.__name__}", label
            )
        return parsed

    def guarded(self, step, *args):
        """Runs a scenario step; an exception in the harness's own checks
        fails the operation it was looking at, and the run goes on."""
        try:
            step(*args)
        except Exception as e:  # noqa: BLE001 — reported, not swallowed
            where = traceback.extract_tb(e.__traceback__)[-1]
            self.fail(
                self.current or "harness",
                f"check stopped at line {where.lineno}: {type(e).__name__}: {e}",
            )

    def eventually(self, within, probe, every=0.5):
        """Calls `probe` until it returns something other than None (the
        answer, or a failure it recorded) or `within` seconds pass; returns
        its last result."""
        deadline = time.monotonic() + within
        while True:
            got = probe()
            if got is not None or time.monotonic() >= deadline:
                return got
            time.sleep(every)

    # The verdict.

    def report(self, modules, not_applicable):
        """Prints one line per operation of `modules` and a summary;
        returns the exit code."""
        lines, failed, passed = [], 0, 0
        for module in modules:
            for name in operations(module):
                op = f"{module}.{name}"
                if op in not_applicable:
                    continue
                reasons = self.results.get(op)
                if reasons is None:
                    reasons = {"never called (an earlier step it needs failed)": []}
                if reasons:
                    failed += 1
                    parts = [r + (f" [{', '.join(ls)}]" if ls else "") for r, ls in reasons.items()]
                    lines.append(f"FAIL {op}: " + "; ".join(parts))
                else:
                    passed += 1
                    lines.append(f"PASS {op}")
        known = {f"{m}.{n}" for m in modules for n in operations(m)}
        for op in sorted(set(not_applicable) - known):
            failed += 1
            lines.append(f"FAIL {op}: listed as not applicable, but the SDK has no such operation")
        for op in sorted(set(self.results) - known - {"harness"}):
            failed += 1
            lines.append(f"FAIL {op}: called, but not an operation of the modules in scope")
        if "harness" in self.results:
            failed += 1
            lines.append("FAIL harness: " + "; ".join(self.results["harness"]))
        for line in lines:
            print(self.redact(line))
        skipped = sorted(set(not_applicable) & known)
        for op in skipped:
            print(f"SKIP {op}: {not_applicable[op]}")
        elapsed = time.monotonic() - self.started
        print(
            f"{passed + failed} operations: {passed} passed, {failed} failed; "
            f"{len(skipped)} not called (not applicable to image-backed services, or not built: each "
            f"says which); {elapsed:.0f} s"
        )
        return 1 if failed else 0
