"""soswap.restart"""
