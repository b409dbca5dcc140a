"""Thin HTTP routers: parse the request, call protocol logic, render the answer."""
