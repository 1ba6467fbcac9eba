"""The BPF C program and its shared header, installed as package data."""
