"""What gradio 6.31's MCP server gets wrong for this app's tools, put right: `repair(demo)` after launch.

- Answers. gradio runs a tool through its own queue client and, when the MCP client asks for no progress
  reports (the usual call), hands the result on as one value: a tool with several outputs answers the
  text of a Python tuple (its images as file records), and one with a `gr.State` output fails. With
  progress reports it passes the outputs one by one, each image file as MCP image content plus its URL.
  Both calls now do the latter, and a JSON output (a dict) or a gallery or file list is written as JSON
  text, not as a Python repr.
- Lists of files (`gr.File(file_count="multiple")`: references, batch). Their schema points at a
  definition (`#/$defs/FileData`) that is nested in the property, not at the root, so the MCP server's
  own argument check fails on any list given; and a URL in such a list is not turned into a file value.
  The item schema is made self-contained, and each URL of a list becomes a file value as a single one does.
"""

from __future__ import annotations

import json

import gradio as gr
import gradio_client.utils


def launch_repaired(demo: gr.Blocks, block: bool, **options):
    """`demo.launch(**options)`, then `repair`: the MCP server exists only once the app is launched, so
    gradio never blocks the thread; this does, after the repair, when `block`. gradio's (app, url, share)."""
    launched = demo.launch(prevent_thread_lock=True, **options)
    repair(demo)
    if block:
        demo.block_thread()
    return launched


def repair(demo: gr.Blocks) -> None:
    """Once the app is launched with `mcp_server=True`; nothing without it."""
    server = demo.mcp_server_obj
    if server is None:
        return
    whole, in_steps = server._execute_tool_without_progress, server._execute_tool_with_progress
    schema_of, to_files = server.get_input_schema, server.convert_strings_to_filedata

    async def without_progress(job):
        [result] = await whole(job)  # the queue client's result: a tuple for several outputs
        return [as_content(output) for output in (result if isinstance(result, tuple) else [result])]

    async def with_progress(job, progress_token):
        return [as_content(output) for output in await in_steps(job, progress_token)]

    def input_schema(tool_name, parameters=None):
        schema, positions = schema_of(tool_name, parameters)
        properties = {name: self_contained(p) for name, p in schema["properties"].items()}
        return {**schema, "properties": properties}, positions

    def strings_to_files(value, positions):
        lists = [p[:-1] for p in positions if p[-1] == "items"]
        items = [[*p, i] for p in lists for i in range(len(list_at(value, p)))]
        return to_files(value, positions + items)

    server._execute_tool_without_progress = without_progress
    server._execute_tool_with_progress = with_progress
    server.get_input_schema = input_schema
    server.convert_strings_to_filedata = strings_to_files


def as_content(output):
    """A JSON output, gallery or file list as JSON text; anything else (text, one file) as gradio gives it."""
    if isinstance(output, (dict, list)) and not gradio_client.utils.is_file_obj_with_meta(output):
        return json.dumps(output)
    return output


def self_contained(prop: dict) -> dict:
    """A list-of-files property without its nested `$defs` and the `$ref` into them (the item already
    says what it is: a string, an http(s) URL)."""
    if "$defs" not in prop or not isinstance(prop.get("items"), dict):
        return prop
    items = {k: v for k, v in prop["items"].items() if k != "$ref"}
    return {k: v for k, v in prop.items() if k != "$defs"} | {"items": items}


def list_at(value, path) -> list:
    for key in path:
        value = value.get(key) if isinstance(value, dict) else None
    return value if isinstance(value, list) else []
