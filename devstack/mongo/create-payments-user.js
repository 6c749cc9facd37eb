// docker-compose's MongoDB, first start only (docker-entrypoint-initdb.d):
// the payment service's own user, readWrite on its database and nothing else.
db.getSiblingDB("payments").createUser({
  user: "payments",
  pwd: process.env.PAYMENTS_DB_PASSWORD,
  roles: [{ role: "readWrite", db: "payments" }],
});
