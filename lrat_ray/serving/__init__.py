"""What runs on Ray Serve: the retriever application (request parsing, admission, search,
deployment layouts), the agents' LLM and the retriever's MCP tools."""
