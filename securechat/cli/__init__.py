"""The console commands: securechat-server, -client, -token and -certs."""
