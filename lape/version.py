"""The package version (its own module, so that any module can read it without importing the
package and everything it re-exports)."""

__version__ = "0.2.0"
