"""An MCP client the project did not write: the official Python SDK (`mcp` on PyPI, 1.x or 2.x)
uses the hub's `/mcp` end to end. Run by `tests/mcp_python.rs` against the real binary:

    MKWW_MCP_URL=http://127.0.0.1:8080/mcp MKWW_MCP_TOKEN=<token or API key> python3 client.py

It lists the tools, creates a task, waits for it and reads it back as `succeeded`, and checks
that a request without credentials gets 401 with the RFC 9728 `resource_metadata` challenge.
It prints one JSON line of what it saw and exits 0 only when every check held.
"""

import asyncio
import json
import os
import sys
import urllib.error
import urllib.request

from mcp import ClientSession

try:  # mcp 2.x: the transport takes an HTTP client that carries the headers.
    from mcp.client.streamable_http import streamable_http_client
    from mcp.shared._httpx_utils import create_mcp_http_client

    def connect(url, headers):
        return streamable_http_client(url, http_client=create_mcp_http_client(headers=headers))

except ImportError:  # mcp 1.x
    from mcp.client.streamable_http import streamablehttp_client

    def connect(url, headers):
        return streamablehttp_client(url, headers=headers)


EXPECTED_TOOLS = {
    "create_task", "get_task", "list_tasks", "cancel_task", "retry_task", "wait_for_task",
    "list_queues", "create_conversation", "append_message", "search_memory", "get_context",
    "list_integrations", "list_routes",
}


def structured(result):
    """A tool result's structured content (either SDK's spelling), else its JSON text."""
    for name in ("structured_content", "structuredContent"):
        value = getattr(result, name, None)
        if value:
            return value
    return json.loads(result.content[0].text)


def is_error(result):
    return bool(getattr(result, "is_error", None) or getattr(result, "isError", None))


def check(condition, message):
    if not condition:
        raise AssertionError(message)


async def use_the_tools(url, token):
    seen = {}
    async with connect(url, {"Authorization": f"Bearer {token}"}) as streams:
        read, write = streams[0], streams[1]
        async with ClientSession(read, write) as session:
            initialized = await session.initialize()
            seen["protocol_version"] = str(
                getattr(initialized, "protocol_version", None)
                or getattr(initialized, "protocolVersion", None)
            )
            tools = (await session.list_tools()).tools
            names = {tool.name for tool in tools}
            seen["tools"] = sorted(names)
            check(EXPECTED_TOOLS <= names, f"missing tools: {EXPECTED_TOOLS - names}")

            created = await session.call_tool(
                "create_task", {"type": "echo", "payload": {"from": "python"}}
            )
            check(not is_error(created), f"create_task failed: {created}")
            task_id = structured(created)["task"]["id"]
            seen["task_id"] = task_id

            progress = []

            async def on_progress(value, total, message):
                progress.append(message)

            waited = await session.call_tool(
                "wait_for_task",
                {"id": task_id, "timeout_seconds": 30},
                progress_callback=on_progress,
            )
            check(not is_error(waited), f"wait_for_task failed: {waited}")
            check(structured(waited)["finished"], f"the task did not finish: {waited}")

            read_back = await session.call_tool("get_task", {"id": task_id})
            check(not is_error(read_back), f"get_task failed: {read_back}")
            task = structured(read_back)["task"]
            seen["status"] = task["status"]
            seen["result"] = task.get("result")
            check(task["status"] == "succeeded", f"the task is {task['status']}")

            missing = await session.call_tool("get_task", {"id": "no-such-task"})
            check(is_error(missing), "get_task of an unknown id must be a tool error")
            seen["missing_code"] = json.loads(missing.content[0].text)["error"]["code"]
    return seen


def unauthenticated(url):
    body = json.dumps({
        "jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                   "clientInfo": {"name": "anonymous", "version": "0"}},
    }).encode()
    request = urllib.request.Request(url, data=body, method="POST", headers={
        "Content-Type": "application/json",
        "Accept": "application/json, text/event-stream",
    })
    try:
        urllib.request.urlopen(request, timeout=10)
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("WWW-Authenticate"), json.loads(e.read() or b"null")
    raise AssertionError("a request without credentials was answered")


def main():
    url = os.environ["MKWW_MCP_URL"]
    token = os.environ["MKWW_MCP_TOKEN"]
    seen = asyncio.run(use_the_tools(url, token))
    status, challenge, body = unauthenticated(url)
    base = url[: -len("/mcp")]
    expected = f'Bearer resource_metadata="{base}/.well-known/oauth-protected-resource"'
    check(status == 401, f"without credentials: {status}")
    check(challenge == expected, f"WWW-Authenticate: {challenge!r}, expected {expected!r}")
    check(body["error"]["code"] == "unauthenticated", f"401 body: {body}")
    seen["unauthenticated"] = {"status": status, "www_authenticate": challenge}
    print(json.dumps(seen))


if __name__ == "__main__":
    try:
        main()
    except AssertionError as e:
        print(f"FAILED: {e}", file=sys.stderr)
        sys.exit(1)
