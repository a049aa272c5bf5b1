"""Qt widgets shared by both ends of a call: the chat panel and the video view.

They stay thin (DESIGN.md): each reads a Qt-free model (``peer.chat.ChatLog``, a
``peer.media.DisplayFrame``) and hands user actions back as signals; the call window
of each end connects those to its call. Nothing here imports aiortc or PyAV, so the
device's resident agent may show these widgets without loading either.
"""
