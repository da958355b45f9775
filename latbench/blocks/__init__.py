"""Block configurations (the unit of export, measurement and tables) and candidates (whole models)."""
