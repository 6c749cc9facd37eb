"""The service layer: every decision about cards, payments, jobs and refunds.

Transports (HTTP routes, Celery tasks, the Kafka bridge) parse their input,
call one function here, and map its result or typed error.
"""
