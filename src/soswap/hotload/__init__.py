"""soswap.hotload"""
