"""soswap.report"""
