"""OAuth 2.1 protocol logic, free of web-framework code. Modules are named for what they own."""
