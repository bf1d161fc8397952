from services.collaboration.service import CollabService
from shared.runner import run_service

if __name__ == "__main__":
    run_service("collaboration", CollabService)
