"""Realistic Claude Code requests, written from the public Messages API documentation and from
the shape of what Claude Code 2.1 sends (logged against a fake upstream; no prompt text copied).

Each entry is (name, headers, body). ``WELL_FORMED`` names the ones a full Anthropic upstream
takes as they are; the others need a repair any upstream would need.
"""

from __future__ import annotations

import base64
import copy
import json
from typing import Any, Dict, List, Tuple

SESSION = "5d0c3b1e-8a52-4c1d-9f3e-0a7b6c5d4e3f"
BETAS = ("claude-code-20250219,context-1m-2025-08-07,interleaved-thinking-2025-05-14,"
         "context-management-2025-06-27,prompt-caching-scope-2026-01-05,effort-2025-11-24")
HEADERS = [("anthropic-version", "2023-06-01"), ("anthropic-beta", BETAS), ("x-api-key", "client-key"),
           ("X-Claude-Code-Session-Id", SESSION), ("x-app", "cli"),
           ("User-Agent", "claude-cli/2.1.197 (external, cli)")]
PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64).decode()
PDF = base64.b64encode(b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF").decode()
EPHEMERAL = {"type": "ephemeral"}


def _tool(name: str, description: str, properties: Dict[str, Any], **extra: Any) -> Dict[str, Any]:
    return {"name": name, "description": description,
            "input_schema": {"type": "object", "properties": properties, "required": list(properties)[:1],
                             "additionalProperties": False, "$schema": "http://json-schema.org/draft-07/schema#"},
            **extra}


TOOLS: List[Dict[str, Any]] = [
    _tool("Bash", "Run a shell command and return its output.", {"command": {"type": "string"},
                                                                   "timeout": {"type": "number"}}),
    _tool("Read", "Read a file from the local filesystem.", {"file_path": {"type": "string"},
                                                               "offset": {"type": "integer"}}),
    _tool("Edit", "Replace a string in a file.", {"file_path": {"type": "string"}, "old_string": {"type": "string"},
                                                    "new_string": {"type": "string"}}),
    _tool("Write", "Write a file.", {"file_path": {"type": "string"}, "content": {"type": "string"}}),
    _tool("Glob", "Find files by pattern.", {"pattern": {"type": "string"}}),
    _tool("Grep", "Search file contents.", {"pattern": {"type": "string"}, "path": {"type": "string"}}),
    _tool("TaskCreate", "Create a task.", {"subject": {"type": "string"}}),
    _tool("TaskUpdate", "Update a task.", {"taskId": {"type": "string"}, "status": {"type": "string"}}),
    _tool("TaskList", "List tasks.", {"filter": {"type": "string"}}),
    _tool("TaskGet", "Get a task.", {"taskId": {"type": "string"}}),
    _tool("WebFetch", "Fetch a URL.", {"url": {"type": "string", "format": "uri"}, "prompt": {"type": "string"}}),
    _tool("NotebookEdit", "Edit a notebook cell.", {"notebook_path": {"type": "string"}}),
    _tool("Agent", "Launch a sub-agent.", {"description": {"type": "string"}, "prompt": {"type": "string"}}),
    _tool("Skill", "Run a skill.", {"skill": {"type": "string"}}),
    _tool("CronCreate", "Schedule a prompt.", {"cron": {"type": "string"}}, defer_loading=True),
    _tool("CronDelete", "Delete a schedule.", {"id": {"type": "string"}}, defer_loading=True),
    _tool("CronList", "List schedules.", {"all": {"type": "boolean"}}, defer_loading=True),
    _tool("EnterWorktree", "Enter a git worktree.", {"name": {"type": "string"}}, defer_loading=True),
    _tool("ExitWorktree", "Leave the worktree.", {"keep": {"type": "boolean"}}, defer_loading=True),
    _tool("SendMessage", "Message a teammate.", {"to": {"type": "string"}, "text": {"type": "string"}},
          input_examples=[{"to": "lead", "text": "done"}]),
    _tool("mcp__files__search", "Search an MCP server.", {"query": {"type": "string"}}, defer_loading=True,
          cache_control=EPHEMERAL),
    {"type": "web_search_20250305", "name": "web_search", "max_uses": 5},
]


def _system() -> List[Dict[str, Any]]:
    return [
        {"type": "text", "text": "x-anthropic-billing-header: cc_version=2.1.197; cc_entrypoint=cli;"},
        {"type": "text", "text": "You are a coding agent running in the user's terminal.",
         "cache_control": EPHEMERAL},
        {"type": "text", "text": "Follow the repository's conventions. " * 40, "cache_control": EPHEMERAL},
    ]


def _base(messages: List[Dict[str, Any]], **extra: Any) -> Dict[str, Any]:
    body = {
        "model": "claude-opus-4-8",
        "messages": messages,
        "system": _system(),
        "tools": copy.deepcopy(TOOLS),
        "tool_choice": {"type": "auto"},
        "metadata": {"user_id": json.dumps({"device_id": "d" * 64, "account_uuid": "", "session_id": SESSION})},
        "max_tokens": 64000,
        "thinking": {"type": "enabled", "budget_tokens": 31999},
        "context_management": {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]},
        "output_config": {"effort": "high"},
        "stream": True,
    }
    body.update(extra)
    return body


def _user_first(text: str) -> Dict[str, Any]:
    return {"role": "user", "content": [
        {"type": "text",
         "text": "<system-reminder>\nContext for this session: today is 2026-11-25.\n</system-reminder>"},
        {"type": "text", "text": text, "cache_control": EPHEMERAL}]}


AGENTS_NOTE = {"role": "system", "content": "Available agent types: general-purpose, Explore, Plan."}
THINKING = {"type": "thinking", "thinking": "I should look at the files first.",
            "signature": "EqQBCkYIBxgCKkD" + "A" * 60}


def corpus() -> List[Tuple[str, List[Tuple[str, str]], Dict[str, Any]]]:
    tool_loop = [
        _user_first("Fix the failing test in tests/test_app.py"),
        AGENTS_NOTE,
        {"role": "assistant", "content": [
            THINKING,
            {"type": "text", "text": "Let me run the tests."},
            {"type": "tool_use", "id": "toolu_01A", "name": "Bash", "input": {"command": "pytest -q"}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_01A", "content": "1 failed, 12 passed"}]},
        {"role": "assistant", "content": [
            {"type": "tool_use", "id": "toolu_01B", "name": "Read", "input": {"file_path": "tests/test_app.py"}},
            {"type": "tool_use", "id": "toolu_01C", "name": "Read", "input": {"file_path": "app.py"}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_01B", "content": [
                {"type": "text", "text": "def test_add():\n    assert add(1, 2) == 3\n"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}}]},
            {"type": "tool_result", "tool_use_id": "toolu_01C", "is_error": True,
             "content": "File does not exist.", "cache_control": EPHEMERAL}]},
    ]
    interrupted = [
        _user_first("Rename the module"),
        {"role": "assistant", "content": [
            {"type": "text", "text": "I'll look for usages."},
            {"type": "tool_use", "id": "toolu_02A", "name": "Grep", "input": {"pattern": "import app"}}]},
        {"role": "user", "content": [{"type": "text", "text": "[Request interrupted by user for tool use]"}]},
        {"role": "user", "content": [{"type": "text", "text": "Actually, only rename the class."}]},
    ]
    messy = [
        _user_first("Summarise this"),
        {"role": "user", "content": [{"type": "text", "text": ""}, {"type": "text", "text": "  "},
                                     {"type": "text", "text": "and also this"}]},
        {"role": "assistant", "content": [
            {"type": "redacted_thinking", "data": "EmwKAhgBEgy" + "B" * 40},
            {"type": "text", "text": "Here is the summary."}]},
        {"role": "assistant", "content": [{"type": "text", "text": "Anything else?"}]},
        {"role": "user", "content": ""},
        {"role": "user", "content": "Yes, one more thing."},
    ]
    media = [
        {"role": "user", "content": [
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
            {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": PDF},
             "title": "spec.pdf", "cache_control": EPHEMERAL},
            {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "plain notes"}},
            {"type": "text", "text": "What do these say?"}]},
    ]
    orphan = [
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_gone", "content": "output from before compaction"},
            {"type": "text", "text": "This session is being continued from a previous conversation."}]},
    ]
    assistant_first = [
        {"role": "assistant", "content": "Earlier I proposed a plan."},
        {"role": "user", "content": "Go ahead with it."},
    ]
    adaptive = _base([_user_first("Explain the architecture"), AGENTS_NOTE],
                     thinking={"type": "adaptive", "display": "summarized"}, max_tokens=128000)
    forced_server_tool = _base([_user_first("Search the web for the changelog")],
                               tool_choice={"type": "tool", "name": "web_search"})
    title = {"model": "claude-haiku-4-5", "max_tokens": 512, "stream": True,
             "system": [{"type": "text", "text": "Write a 3-6 word title for this conversation."}],
             "messages": [{"role": "user", "content": "Fix the failing test in tests/test_app.py"}],
             "metadata": {"user_id": json.dumps({"session_id": SESSION})}, "temperature": 0}
    count = {"model": "claude-opus-4-8", "system": _system(), "tools": copy.deepcopy(TOOLS),
             "messages": tool_loop[:4], "thinking": {"type": "enabled", "budget_tokens": 31999}}
    return [
        ("first_turn", HEADERS, _base([_user_first("hello"), AGENTS_NOTE])),
        ("tool_loop", HEADERS, _base(tool_loop)),
        ("tool_loop_json", HEADERS, _base(tool_loop, stream=False)),
        ("adaptive_thinking", HEADERS, adaptive),
        ("media", HEADERS, _base(media, thinking={"type": "disabled"})),
        ("interrupted_tool", HEADERS, _base(interrupted)),
        ("messy_history", HEADERS, _base(messy)),
        ("orphan_tool_result", HEADERS, _base(orphan)),
        ("assistant_first", HEADERS, _base(assistant_first, thinking={"type": "disabled"})),
        ("forced_server_tool", HEADERS, forced_server_tool),
        ("title_generation", [("anthropic-version", "2023-06-01")], title),
        ("count_tokens", HEADERS, count),
    ]


#: Entries a full Anthropic upstream takes unchanged (nothing to repair).
WELL_FORMED = {"first_turn", "tool_loop", "tool_loop_json", "adaptive_thinking", "media", "forced_server_tool",
               "title_generation", "count_tokens"}
