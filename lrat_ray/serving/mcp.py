"""The retriever's two tools over MCP (Model Context Protocol, streamable HTTP).

Agent frameworks increasingly call tools through MCP servers (BrowseComp-Plus ships one for its
searcher). ``lrat mcp`` runs such a server in front of a running ``lrat serve``: the tools
``search(query, k)`` and ``get_document(docid)`` forward to ``POST /search`` and
``GET /documents/{docid}`` and return their JSON as text, so the MCP path and the HTTP path always
answer the same.
"""

import json
from dataclasses import dataclass

from lrat_ray.infra.config import checked, option


@dataclass
@checked
class McpConfig:
    """Options of ``lrat mcp``."""

    url: str = option("http://127.0.0.1:8000", help="base URL of the running `lrat serve`")
    host: str = option("127.0.0.1", help="address the MCP server binds")
    port: int = option(8001, help="MCP server port (tools at /mcp)")
    token: str | None = option(None, help="bearer token of the retriever, if it has one")
    timeout_s: float = option(30.0, help="timeout of each call to the retriever")


def build_mcp_server(config: McpConfig):
    import httpx
    from mcp.server.mcpserver import MCPServer

    from lrat_ray.infra.chat_client import bearer_headers

    server = MCPServer(
        name="lrat-retriever", instructions="search: ranked documents for a query; get_document: a full document"
    )
    headers = bearer_headers(config.token)

    async def call(method: str, path: str, **kwargs) -> str:
        async with httpx.AsyncClient(base_url=config.url, headers=headers, timeout=config.timeout_s) as client:
            response = await client.request(method, path, **kwargs)
        if response.status_code >= 400:
            raise ValueError(f"retriever answered {response.status_code}: {response.text}")
        return json.dumps(response.json(), ensure_ascii=False)

    @server.tool()
    async def search(query: str, k: int = 5) -> str:
        """Search the corpus; returns JSON with the top-k {docid, score, title, snippet}."""
        return await call("POST", "/search", json={"query": query, "k": k})

    @server.tool()
    async def get_document(docid: str) -> str:
        """The full text of one document by its docid; returns JSON {docid, title, text}."""
        return await call("GET", f"/documents/{docid}")

    return server


def run_mcp(config: McpConfig) -> None:
    import anyio

    server = build_mcp_server(config)
    anyio.run(lambda: server.run_streamable_http_async(host=config.host, port=config.port))
