"""soswap.replace"""
