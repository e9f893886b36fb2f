"""MCP tool answers with one content item per output: JSON text for a JSON output, an image for a picture.

gradio 6.31's MCP server runs a tool through its own queue client. When the MCP client asks for no
progress reports (the usual call), it hands the tool's result on as a single value: a tool with several
outputs answers the text of a Python tuple, images included as file records, and a tool with a
`gr.State` output fails. With progress reports it passes the outputs one by one, and turns each output
file that is an image into MCP image content (plus its URL). `answer_each_output` makes the usual call
do the same, and writes every JSON output (a dict) as JSON text instead of its Python repr.
"""

from __future__ import annotations

import json

import gradio as gr
import gradio_client.utils


def answer_each_output(demo: gr.Blocks) -> None:
    """Once the app is launched with `mcp_server=True`: every tool answers output by output."""
    server = demo.mcp_server_obj
    if server is None:
        return
    whole, in_steps = server._execute_tool_without_progress, server._execute_tool_with_progress

    async def without_progress(job):
        [result] = await whole(job)  # the queue client's result: a tuple for several outputs
        return [as_content(output) for output in (result if isinstance(result, tuple) else [result])]

    async def with_progress(job, progress_token):
        return [as_content(output) for output in await in_steps(job, progress_token)]

    server._execute_tool_without_progress = without_progress
    server._execute_tool_with_progress = with_progress


def as_content(output):
    """A JSON output as JSON text; anything else (text, a file record) as gradio gives it."""
    if isinstance(output, dict) and not gradio_client.utils.is_file_obj_with_meta(output):
        return json.dumps(output)
    return output
