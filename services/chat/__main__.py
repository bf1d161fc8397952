from services.chat.service import ChatService
from shared.runner import run_service

if __name__ == "__main__":
    run_service("chat", ChatService)
