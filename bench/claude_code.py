"""A real Claude Code request for the benchmarks, captured at bench time (its system prompt and tool
descriptions are Claude Code's own text, so none of it is committed): the pinned CLI runs one tool
loop against the test fake upstream, which asks it to Read a file of this folder; its second
request, the one that carries the tool call and its result, is the body. ``sized`` grows it to a
size by repeating that last tool call and result (or trims it below its own size).

Usage: python bench/claude_code.py [size in KB]: prints the captured request's shape."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import tempfile
from typing import Any, Dict, List, Optional, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

#: The Claude Code release whose request the bench measures: the newest that `make test` pins.
CLI_VERSION = "2.1.332"
CLI = os.path.join(ROOT, ".cache", "claude-code", CLI_VERSION, "node_modules", ".bin", "claude")
#: The file the fake upstream asks Claude Code to read: the bench's own code, about 6 KB, a typical Read.
READ_FILE = os.path.join(HERE, "upstream.py")
#: Trimming cuts no string to fewer characters than this (ids, types and signatures are shorter).
SHORTEST_CUT = 40


def _read_tool_stream(path: str) -> List[Tuple[str, Dict[str, Any]]]:
    """The fake's tool-and-thinking answer, asking for a Read of ``path`` instead of `ls -la`."""
    from tests.fakes.anthropic_upstream import tool_and_thinking_stream

    events = copy.deepcopy(tool_and_thinking_stream())
    pieces = [data for _, data in events if data.get("delta", {}).get("type") == "input_json_delta"]
    arguments = json.dumps({"file_path": path})
    pieces[0]["delta"]["partial_json"], pieces[1]["delta"]["partial_json"] = arguments[:9], arguments[9:]
    for _, data in events:
        block = data.get("content_block", {})
        if block.get("type") == "tool_use":
            block["name"] = "Read"
    return events


def capture(cli: str = CLI) -> Optional[Dict[str, Any]]:
    """Claude Code's request that carries its tool call and result, as the CLI sent it to the fake
    upstream (directly, no agproxy between); None when the CLI is not installed or fails."""
    raw = capture_bytes(cli)
    return None if raw is None else json.loads(raw)


def capture_bytes(cli: str = CLI) -> Optional[bytes]:
    """The bytes of that request, as the CLI wrote them."""
    from tests.fakes.anthropic_upstream import FakeAnthropic, Sse

    if not os.path.exists(cli):
        return None
    with tempfile.TemporaryDirectory() as folder, FakeAnthropic() as fake:
        home, work = os.path.join(folder, "home"), os.path.join(folder, "work")
        os.mkdir(home)
        os.mkdir(work)
        with open(os.path.join(home, ".claude.json"), "w") as f:
            json.dump({"hasCompletedOnboarding": True}, f)
        target = os.path.join(work, "upstream.py")
        with open(READ_FILE) as source, open(target, "w") as copy_to:
            copy_to.write(source.read())
        fake.script(Sse(_read_tool_stream(target)))
        env = {k: v for k, v in os.environ.items()
               if "proxy" not in k.lower() and not k.startswith(("ANTHROPIC_", "CLAUDE_"))}
        env.update(HOME=home, ANTHROPIC_BASE_URL=f"http://127.0.0.1:{fake.port}", ANTHROPIC_AUTH_TOKEN="bench",
                   CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC="1")
        result = subprocess.run([cli, "-p", "read upstream.py", "--allowedTools", "Read"], cwd=work, env=env,
                                capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
        turns = [r.body for r in fake.requests if r.target.startswith("/v1/messages")]
        if result.returncode != 0 or len(turns) < 2:
            print(f"bench: Claude Code {CLI_VERSION} capture failed ({result.returncode}): {result.stderr[-300:]}",
                  file=sys.stderr)
            return None
        return turns[1]


def wire(body: Any) -> bytes:
    """The body as Claude Code writes it (JSON.stringify: no spaces, characters beyond ASCII as UTF-8,
    not escaped; escapes would send agproxy down its surrogate check, which the CLI's bytes never do)."""
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def size_of(body: Dict[str, Any]) -> int:
    """Bytes of the body as Claude Code sends it."""
    return len(wire(body))


def _tool_pair(body: Dict[str, Any]) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    assistant, result = body["messages"][-2:]
    return assistant, result


def _drop_cache_control(message: Dict[str, Any]) -> Dict[str, Any]:
    message = copy.deepcopy(message)
    for block in message["content"] if isinstance(message["content"], list) else ():
        block.pop("cache_control", None)
    return message


def _repeat_pair(assistant: Dict[str, Any], result: Dict[str, Any], n: int) -> List[Dict[str, Any]]:
    """Copy ``n`` of the tool call and its result, each pair with its own tool_use id (as a session's
    are) and without cache_control, which Claude Code puts on the last message alone."""
    pair_text = json.dumps([_drop_cache_control(assistant), _drop_cache_control(result)])
    old_ids = {b["id"] for b in assistant["content"] if b.get("type") == "tool_use"}
    out: List[Dict[str, Any]] = []
    for i in range(n):
        text = pair_text
        for old in old_ids:
            text = text.replace(json.dumps(old), json.dumps(f"{old}_r{i}"))
        out.extend(json.loads(text))
    return out


def _longest_string(node: Any, holder: Any = None, key: Any = None, best: Any = None) -> Any:
    """(length, container, key) of the longest string in the JSON value."""
    if isinstance(node, str):
        return (len(node), holder, key) if best is None or len(node) > best[0] else best
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for k, v in items:
        best = _longest_string(v, node, k, best)
    return best


def sized(body: Dict[str, Any], target: int) -> Dict[str, Any]:
    """The request grown to about ``target`` bytes by inserting copies of its last tool call and result
    before it; below its own size, trimmed instead: its tools dropped from the end, then its longest
    strings cut (metadata's aside), so the shape (system, messages, tool loop) stays."""
    body = copy.deepcopy(body)
    size = size_of(body)
    if size < target:
        assistant, result = _tool_pair(body)
        pair = len(wire(_repeat_pair(assistant, result, 1))) - len("[]") + len(",")
        count = max(0, round((target - size) / pair))
        body["messages"] = body["messages"][:-2] + _repeat_pair(assistant, result, count) + body["messages"][-2:]
        return body
    while size > target and body.get("tools"):
        body["tools"] = body["tools"][:-1]
        size = size_of(body)
    while size > target:
        # not metadata: its user_id is one JSON text (device, account, session), which no client sends cut
        length, holder, key = _longest_string({k: v for k, v in body.items() if k != "metadata"})
        if length <= SHORTEST_CUT:
            break  # ids, types, signatures: cutting those would make the request invalid, not smaller
        holder[key] = holder[key][:max(SHORTEST_CUT, length - (size - target))]
        size = size_of(body)
    return body


def main() -> None:
    raw = capture_bytes()
    if raw is None:
        raise SystemExit("no capture (is the CLI installed? make claude-cli)")
    body = json.loads(raw)
    print(f"wire() writes the CLI's bytes again: {wire(body) == raw}")
    print(f"captured {size_of(body):,} bytes: " + ", ".join(f"{k} {size_of({k: v}):,}" for k, v in body.items()))
    for kb in [int(a) for a in sys.argv[1:]]:
        grown = sized(body, kb * 1000)
        print(f"{kb} KB -> {size_of(grown):,} bytes, {len(grown['messages'])} messages, "
              f"{len(grown.get('tools', []))} tools")


if __name__ == "__main__":
    main()
