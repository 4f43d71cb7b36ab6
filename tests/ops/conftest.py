from tests.ops.admin_support import admin_server

__all__ = ["admin_server"]
