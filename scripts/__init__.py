"""Development scripts and the tools they share; the product never imports this package."""
