"""soswap.loader"""
