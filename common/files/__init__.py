"""Weight files in any framework's format, converted through canonical weights (the backends read and
write their own formats; this layer picks the reader and writer and checks what passes between).
"""
