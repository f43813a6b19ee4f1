"""The language server (pygls): next-word completion and inline completion for prose."""
