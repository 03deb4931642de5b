"""soswap.proc"""
