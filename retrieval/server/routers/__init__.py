"""The server's routes by area, each a factory of an APIRouter for one server's limits (ServeOptions)."""
