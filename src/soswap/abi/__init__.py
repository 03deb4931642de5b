"""soswap.abi"""
