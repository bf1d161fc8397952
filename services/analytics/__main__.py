from services.analytics.service import AnalyticsService
from shared.runner import run_service

if __name__ == "__main__":
    run_service("analytics", AnalyticsService)
