"""The Mobile Efficiency Score and Pareto optimality."""
