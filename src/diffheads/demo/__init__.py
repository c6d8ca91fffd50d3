"""The demos: synthetic faces (make demo) and GRID speaker s1 (make demo-real), their plots and checks."""
