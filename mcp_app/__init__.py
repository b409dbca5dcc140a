"""mcp_app: a protected MCP server, and the token verifier any MCP server can reuse."""
