"""Shared pieces of the Streamlit dashboard: where data comes from, live feeds, charts, formatting.

Pages (``pages/*.py``) only render; they read through :func:`dashboard.runtime.source`.
"""
